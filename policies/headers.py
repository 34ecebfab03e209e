"""OpenAI's ``x-ratelimit-*`` response headers, from the same snapshot as the checks.

For each per-minute limit that is set (requests, tokens) three headers:

* ``x-ratelimit-limit-*``: the limit.
* ``x-ratelimit-remaining-*``: what is left once this request is counted
  (its ``requested_tokens``, capped at the limit, for tokens), never below 0.
* ``x-ratelimit-reset-*``: the time until the remaining value next goes up,
  that is until the oldest entry of the window (this request included) leaves
  it.  On a 429 for that limit where the window held exactly the limit, this
  equals the denial's ``retry_after``; the ``Retry-After`` of a 429 is always
  the authoritative wait.

Durations are written as OpenAI writes them (Go's duration style): ``"20ms"``,
``"1s"``, ``"59s"``, ``"1m0s"``, ``"6m0s"``, ``"1.5s"``, ``"1h0m0s"``.
"""

from __future__ import annotations

import math

from policies.principal import Limits
from policies.usage import UsageSnapshot
from policies.window import MINUTE, amounts_in_window, in_window


def format_reset(seconds: float) -> str:
    """``seconds`` as an OpenAI-style duration, rounded up to the millisecond.

    Under a second: milliseconds (``"20ms"``); otherwise hours, minutes and
    seconds with the larger units only when needed and the seconds' fraction
    trimmed of zeros (``"1s"``, ``"1m0s"``, ``"2m3.25s"``).  Zero or a negative
    value is ``"0s"``.
    """
    millis = math.ceil(seconds * 1000 - 1e-6) if seconds > 0 else 0
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _request_headers(limit: int, usage: UsageSnapshot, now: float) -> dict[str, str]:
    times = [*in_window(usage.recent_requests, now, MINUTE), now]
    return {
        "x-ratelimit-limit-requests": str(max(0, limit)),
        "x-ratelimit-remaining-requests": str(max(0, limit - len(times))),
        "x-ratelimit-reset-requests": format_reset(times[0] + MINUTE - now),
    }


def _token_headers(
    limit: int, usage: UsageSnapshot, now: float, requested_tokens: int
) -> dict[str, str]:
    need = max(0, min(requested_tokens, limit))
    entries = amounts_in_window(usage.recent_tokens, now, MINUTE)
    if need:
        entries.append((now, need))
    used = sum(n for _, n in entries)
    reset = entries[0][0] + MINUTE - now if entries else 0.0
    return {
        "x-ratelimit-limit-tokens": str(max(0, limit)),
        "x-ratelimit-remaining-tokens": str(max(0, limit - used)),
        "x-ratelimit-reset-tokens": format_reset(reset),
    }


def ratelimit_headers(
    limits: Limits, usage: UsageSnapshot, now: float, requested_tokens: int
) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers for this key's set per-minute limits.

    Empty when neither ``requests_per_minute`` nor ``tokens_per_minute`` is
    set: an unlimited key gets no rate-limit headers.  The values describe the
    window as if this request were admitted, for a 200 and a 429 alike.
    """
    headers: dict[str, str] = {}
    if limits.requests_per_minute is not None:
        headers.update(_request_headers(limits.requests_per_minute, usage, now))
    if limits.tokens_per_minute is not None:
        headers.update(_token_headers(limits.tokens_per_minute, usage, now, requested_tokens))
    return headers
