"""The answer of a policy check: ``Allow`` or ``Deny`` with everything the edge needs.

A denial carries a machine code, a human message, the HTTP status and, where
waiting helps, how long to wait.  The status follows one rule:

* 403 when waiting a moment does not help: the key may not do this (a
  missing scope, a model outside its allowlist) or a period quota is used up
  (``reset_at`` says when it comes back).  SDKs do not retry a 403.
* 429 when the request would pass after a short wait: a per-minute rate or
  the concurrency limit.  ``retry_after`` is the real wait, never a guess of
  zero; SDKs retry a 429 by themselves.
* 507 when the server itself lacks room (memory for the model, disk for a
  download), whoever asks.

Messages speak of "this key" only: never a secret, never another key's usage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

MODEL_NOT_ALLOWED = "model_not_allowed"
MISSING_SCOPE = "missing_scope"
RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
QUOTA_EXHAUSTED = "quota_exhausted"
INSUFFICIENT_MEMORY = "insufficient_memory"
DOWNLOAD_NOT_ALLOWED = "download_not_allowed"
INSUFFICIENT_STORAGE = "insufficient_storage"


@dataclass(frozen=True)
class Allow:
    """The request may go ahead."""


@dataclass(frozen=True)
class Deny:
    """The request is refused; nothing was charged, loaded or written.

    ``retry_after`` (seconds) is set for every 429: the wait after which the
    same request would pass this check.  ``reset_at`` (epoch seconds) is set
    for a 403 ``quota_exhausted`` that comes back by itself.  ``details`` holds
    the numbers behind the decision, e.g. ``{"scope": "load"}`` or
    ``{"kind": "requests", "limit": 60, "window": "minute", ...}``.
    """

    code: str
    message: str
    status: int
    retry_after: float | None = None
    reset_at: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)


Decision: TypeAlias = Allow | Deny

ALLOW = Allow()
"""The one ``Allow`` every check returns (any ``Allow()`` compares equal to it)."""


def is_denied(decision: Decision) -> bool:
    """True when ``decision`` refuses the request."""
    return isinstance(decision, Deny)
