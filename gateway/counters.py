"""Short-window usage counters per key, in memory (one process, one writer).

Requests and tokens of the last minute, model loads of the last hour, and
requests in flight live here; they are lost on restart by design (a minute's
window).  Period totals (tokens today, download bytes today) come from the
usage store when a key is first seen and are then kept up to date here, so a
restart never forgets a day's quota.  Behind this narrow interface a shared
store (Redis) can replace the dictionaries for a fleet of gateways.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from policies.usage import UsageSnapshot

DAY = 86400.0


def day_start(now: float) -> float:
    return (now // DAY) * DAY


@dataclass
class _KeyCounters:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    loads: deque[float] = field(default_factory=deque)
    concurrent: int = 0
    day: float = 0.0
    tokens_today: int = 0
    download_bytes_today: int = 0


PeriodTotals = Callable[[str, float], tuple[int, int, list[float]]]
"""(key_id, since) -> (tokens since, download bytes since, load times in the last hour)."""


class UsageCounters:
    def __init__(self, period_totals: PeriodTotals) -> None:
        self._period_totals = period_totals
        self._keys: dict[str, _KeyCounters] = {}

    def _get(self, key_id: str, now: float) -> _KeyCounters:
        counters = self._keys.get(key_id)
        today = day_start(now)
        if counters is None or counters.day != today:
            tokens, downloaded, loads = self._period_totals(key_id, today)
            fresh = _KeyCounters(day=today, tokens_today=tokens, download_bytes_today=downloaded)
            if counters is not None:  # a new day: keep the short windows
                fresh.requests, fresh.tokens = counters.requests, counters.tokens
                fresh.concurrent = counters.concurrent
            fresh.loads = deque(t for t in loads if t > now - 3600)
            counters = self._keys[key_id] = fresh
        while counters.requests and counters.requests[0] <= now - 60:
            counters.requests.popleft()
        while counters.tokens and counters.tokens[0][0] <= now - 60:
            counters.tokens.popleft()
        while counters.loads and counters.loads[0] <= now - 3600:
            counters.loads.popleft()
        return counters

    def snapshot(self, key_id: str, now: float) -> UsageSnapshot:
        c = self._get(key_id, now)
        return UsageSnapshot(
            recent_requests=tuple(c.requests),
            recent_tokens=tuple(c.tokens),
            concurrent=c.concurrent,
            tokens_today=c.tokens_today,
            recent_loads=tuple(c.loads),
            download_bytes_today=c.download_bytes_today,
        )

    def admit(self, key_id: str, now: float, *, load: bool) -> None:
        """Count a request that policy allowed: it starts now and holds a slot."""
        c = self._get(key_id, now)
        c.requests.append(now)
        c.concurrent += 1
        if load:
            c.loads.append(now)

    def finish(self, key_id: str) -> None:
        """Release the request's concurrency slot (every exit path calls this once)."""
        c = self._keys.get(key_id)
        if c is not None and c.concurrent > 0:
            c.concurrent -= 1

    def charge_tokens(self, key_id: str, tokens: int, now: float) -> None:
        c = self._get(key_id, now)
        if tokens > 0:
            c.tokens.append((now, tokens))
            c.tokens_today += tokens

    def charge_download(self, key_id: str, nbytes: int, now: float) -> None:
        self._get(key_id, now).download_bytes_today += nbytes

    def in_flight(self, key_id: str) -> int:
        c = self._keys.get(key_id)
        return c.concurrent if c else 0
