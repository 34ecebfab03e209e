"""What one key has used: a plain snapshot the gateway fills in from its counters.

Policies never read counters themselves.  The gateway takes a snapshot of the
asking key's usage at ``now`` and passes it in; the checks in
``policies.limits`` decide from it alone.  Entries older than their window may
be left in: every check filters by its own window (strictly newer than
``now - window``), so a snapshot that was not trimmed gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UsageSnapshot:
    """One key's usage at the moment of a decision.

    Attributes:
        recent_requests: start times (epoch seconds) of this key's requests in
            the last 60 s (every admitted request, whatever its outcome).
        recent_tokens: ``(time, tokens)`` charged to this key in the last 60 s
            (prompt plus completion tokens, charged when a request ends).
        concurrent: this key's requests in flight now.
        tokens_today: tokens charged since the start of the current UTC day.
        recent_loads: times of model loads this key caused in the last 3600 s.
        download_bytes_today: bytes this key downloaded since the start of the
            current UTC day.
    """

    recent_requests: tuple[float, ...] = ()
    recent_tokens: tuple[tuple[float, int], ...] = ()
    concurrent: int = 0
    tokens_today: int = 0
    recent_loads: tuple[float, ...] = ()
    download_bytes_today: int = 0


EMPTY_USAGE = UsageSnapshot()
"""A key that has used nothing yet."""
