"""The standard denials: one builder per kind, so every check words them alike.

Each builder takes only this key's own numbers and speaks of "this key", so a
message never names a key, a secret or another key's usage.  The status rule
(403 / 429 / 507) is explained in ``policies.decision``.
"""

from __future__ import annotations

from typing import Any

from policies.decision import MISSING_SCOPE, QUOTA_EXHAUSTED, RATE_LIMIT_EXCEEDED, Deny
from policies.headers import format_reset
from policies.window import utc_iso


def missing_scope(scope: str, message: str | None = None) -> Deny:
    """403 ``missing_scope``: the key lacks ``scope`` (details ``{"scope": scope}``)."""
    text = message or f"This key lacks the `{scope}` scope."
    return Deny(MISSING_SCOPE, text, 403, details={"scope": scope})


def rate_limited(kind: str, limit: int, window: str | None, wait: float, what: str) -> Deny:
    """429 ``rate_limit_exceeded`` with ``retry_after = wait`` (seconds).

    ``what`` describes the limit, e.g. ``"60 requests per minute"``.
    """
    return Deny(
        RATE_LIMIT_EXCEEDED,
        f"Rate limit reached for this key: {what}. Retry in {format_reset(wait)}.",
        429,
        retry_after=wait,
        details={
            "kind": kind,
            "limit": limit,
            "window": window,
            "remaining": 0,
            "reset_seconds": wait,
        },
    )


def quota_exhausted(
    kind: str, limit: int, window: str, reset_at: float, what: str, **numbers: Any
) -> Deny:
    """403 ``quota_exhausted`` that comes back at ``reset_at`` (named in the message, ISO UTC).

    ``what`` names the quota, e.g. ``"daily quota of 1000 tokens (1000 used)"``;
    ``numbers`` (used, requested, ...) go into the details.
    """
    return Deny(
        QUOTA_EXHAUSTED,
        f"This key's {what} is exhausted; it resets at {utc_iso(reset_at)}.",
        403,
        reset_at=reset_at,
        details={"kind": kind, "limit": limit, "window": window, **numbers},
    )


def quota_never_fits(kind: str, limit: int, window: str | None, what: str, **numbers: Any) -> Deny:
    """403 ``quota_exhausted`` without ``reset_at``: no wait would let this pass.

    For a limit of 0 (or less), which allows nothing, and for a single request
    larger than a whole quota.  403 rather than 429 so that SDKs do not retry.
    """
    return Deny(
        QUOTA_EXHAUSTED,
        f"{what} This does not change with time.",
        403,
        details={"kind": kind, "limit": limit, "window": window, **numbers},
    )


def none_allowed(kind: str, unit: str, window: str | None) -> Deny:
    """The denial of a limit of 0 (or less): the key may never do this."""
    per = f" per {window}" if window else ""
    return quota_never_fits(kind, 0, window, f"This key's limit of 0 {unit}{per} allows none.")
