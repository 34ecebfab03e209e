"""Per-key limits: pure checks of one key's usage snapshot against its ``Limits``.

Each check returns ``ALLOW`` when its limit is ``None`` (unlimited) or not
reached, and a ``Deny`` otherwise:

* per-minute rates and concurrency answer 429 ``rate_limit_exceeded`` with the
  real ``retry_after``: waiting that long lets the same request pass;
* period quotas (tokens per day, loads per hour, download bytes per day)
  answer 403 ``quota_exhausted`` with ``reset_at``: SDKs retry a 429 on their
  own, and retrying a used-up quota for minutes helps nobody.

A limit of 0 (or less) allows nothing, ever: such a check answers 403
``quota_exhausted`` without ``reset_at`` (no wait would help, so not a 429).
OpenAI's response headers come from ``ratelimit_headers`` (re-exported here
from ``policies.headers``, with ``format_reset``).
"""

from __future__ import annotations

from policies.decision import ALLOW, Decision
from policies.denials import none_allowed, quota_exhausted, quota_never_fits, rate_limited
from policies.headers import format_reset, ratelimit_headers
from policies.principal import Limits
from policies.usage import UsageSnapshot
from policies.window import (
    HOUR,
    MIN_WAIT,
    MINUTE,
    amounts_in_window,
    in_window,
    next_utc_midnight,
    wait_for_amount,
    wait_for_count,
)

__all__ = [
    "check_concurrency",
    "check_download_quota",
    "check_loads_per_hour",
    "check_requests_per_minute",
    "check_tokens_per_day",
    "check_tokens_per_minute",
    "format_reset",
    "ratelimit_headers",
]


def check_requests_per_minute(limits: Limits, usage: UsageSnapshot, now: float) -> Decision:
    """At most ``requests_per_minute`` request starts in any sliding 60 s window.

    Denied when the window already holds ``limit`` requests; ``retry_after``
    is when enough of them have left for one more to fit (the in-window
    request at index ``count - limit``, oldest first, is 60 s old).
    """
    limit = limits.requests_per_minute
    if limit is None:
        return ALLOW
    if limit <= 0:
        return none_allowed("requests", "requests", "minute")
    wait = wait_for_count(usage.recent_requests, now, MINUTE, limit)
    if wait <= 0:
        return ALLOW
    return rate_limited("requests", limit, "minute", wait, f"{limit} requests per minute")


def check_tokens_per_minute(
    limits: Limits, usage: UsageSnapshot, now: float, requested_tokens: int
) -> Decision:
    """At most ``tokens_per_minute`` tokens in any sliding 60 s window.

    The request needs ``requested_tokens`` (prompt estimate + ``max_tokens``),
    capped here at the limit itself: a single request larger than the whole
    limit still passes once the window is empty, instead of never.  Denied
    when the tokens in the window plus that need exceed the limit;
    ``retry_after`` is when enough old entries (oldest first) have left the
    window for the need to fit.
    """
    limit = limits.tokens_per_minute
    if limit is None:
        return ALLOW
    if limit <= 0:
        return none_allowed("tokens", "tokens", "minute")
    need = max(0, min(requested_tokens, limit))
    wait = wait_for_amount(usage.recent_tokens, now, MINUTE, limit, need)
    if wait <= 0:
        return ALLOW
    used = sum(n for _, n in amounts_in_window(usage.recent_tokens, now, MINUTE))
    what = f"{limit} tokens per minute ({used} used, {need} requested)"
    return rate_limited("tokens", limit, "minute", wait, what)


def check_concurrency(
    limits: Limits, usage: UsageSnapshot, typical_request_seconds: float
) -> Decision:
    """At most ``max_concurrent`` of this key's requests in flight at once.

    No request's end is known in advance, so ``retry_after`` is an estimate:
    ``typical_request_seconds``, measured by the caller (the gateway passes
    its average request duration), never less than ``MIN_WAIT``.
    """
    limit = limits.max_concurrent
    if limit is None:
        return ALLOW
    if limit <= 0:
        return none_allowed("concurrent", "concurrent requests", None)
    if usage.concurrent < limit:
        return ALLOW
    wait = max(MIN_WAIT, typical_request_seconds)
    what = f"{limit} concurrent requests ({usage.concurrent} in flight)"
    return rate_limited("concurrent", limit, None, wait, what)


def check_tokens_per_day(
    limits: Limits, usage: UsageSnapshot, now: float, requested_tokens: int
) -> Decision:
    """Tokens per UTC day: a period quota against which each request reserves its need.

    ``tokens_today`` includes the open reservations of this key's requests in
    flight, and ``requested_tokens`` is this request's reservation (prompt plus
    its completion ceiling, already clamped by ``affordable_max_tokens`` to what
    is left), so concurrent requests cannot together overshoot the quota.
    Denied when even that does not fit; ``reset_at`` is the next UTC midnight.
    """
    limit = limits.tokens_per_day
    if limit is None:
        return ALLOW
    if limit <= 0:
        return none_allowed("tokens", "tokens", "day")
    used = usage.tokens_today
    if used + requested_tokens <= limit:
        return ALLOW
    what = f"daily quota of {limit} tokens ({used} used or reserved, {requested_tokens} needed)"
    reset_at = next_utc_midnight(now)
    return quota_exhausted(
        "tokens", limit, "day", reset_at, what, used=used, requested=requested_tokens
    )


def check_loads_per_hour(limits: Limits, usage: UsageSnapshot, now: float) -> Decision:
    """At most ``loads_per_hour`` model loads caused by this key in a sliding hour.

    A period quota, so 403 (not 429) with ``reset_at``: the moment enough
    in-window loads have left the window for one more (the oldest one when
    the window holds exactly the limit).
    """
    limit = limits.loads_per_hour
    if limit is None:
        return ALLOW
    if limit <= 0:
        return none_allowed("loads", "model loads", "hour")
    wait = wait_for_count(usage.recent_loads, now, HOUR, limit)
    if wait <= 0:
        return ALLOW
    used = len(in_window(usage.recent_loads, now, HOUR))
    what = f"quota of {limit} model loads per hour ({used} used)"
    return quota_exhausted("loads", limit, "hour", now + wait, what, used=used)


def check_download_quota(
    limits: Limits, usage: UsageSnapshot, now: float, download_bytes: int
) -> Decision:
    """Download bytes per UTC day: the download's known size must fit what is left.

    Unlike tokens, a download's size is known up front, so it is denied when
    ``download_bytes_today + download_bytes`` would exceed the limit, with
    ``reset_at`` at the next UTC midnight.  A download larger than the whole
    daily quota can never pass: denied without ``reset_at``.
    """
    limit = limits.download_bytes_per_day
    used = usage.download_bytes_today
    if limit is None or used + download_bytes <= limit:
        return ALLOW
    if download_bytes > limit:
        what = (
            f"This download ({download_bytes} bytes) is larger than this key's whole "
            f"daily download quota of {limit} bytes."
        )
        return quota_never_fits("download_bytes", limit, "day", what, requested=download_bytes)
    what = f"daily download quota of {limit} bytes ({used} used, {download_bytes} requested)"
    reset_at = next_utc_midnight(now)
    return quota_exhausted(
        "download_bytes", limit, "day", reset_at, what, used=used, requested=download_bytes
    )
