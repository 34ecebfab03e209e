"""Short-window usage counters per key, in memory (one process, one writer).

Requests and tokens of the last minute, model loads of the last hour, and
requests in flight live here; they are lost on restart by design (a minute's
window).  Period totals (tokens today, download bytes today) come from the
usage store when a key is first seen and are then kept up to date here, so a
restart never forgets a day's quota.  For several gateways,
``accounts.redis_counters`` gives the same answers from one Redis.

Tokens are *reserved* when a request is admitted (``reserve_tokens``: the
prompt plus every completion token it may generate) and the reservation is
*settled* to the real count when the request ends (``TokenHold.settle``), so
concurrent requests cannot together overshoot a per-minute or per-day limit:
each one's admission already sees the others' reservations.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from accounts import interfaces
from policies.principal import Limits
from policies.usage import UsageSnapshot

DAY = 86400.0


def day_start(now: float) -> float:
    return (now // DAY) * DAY


@dataclass(eq=False)
class TokenHold:
    """Tokens held for one request: reserved at admission, settled once at its end."""

    counters: MemoryCounters
    key_id: str
    at: float
    amount: int
    settled: bool = False
    finished: bool = False
    ref: str = ""  # no other gateway can reach these counters

    def settle(self, real: int) -> None:
        """Replace the reservation by the ``real`` count (idempotent: first call wins)."""
        if self.settled:
            return
        self.settled = True
        self.counters._settle(self, max(0, real))


@dataclass
class _KeyCounters:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[TokenHold] = field(default_factory=deque)
    loads: deque[float] = field(default_factory=deque)
    concurrent: int = 0
    day: float = 0.0
    tokens_today: int = 0
    download_bytes_today: int = 0


PeriodTotals = Callable[[str, float], tuple[int, int, list[float]]]
"""(key_id, since) -> (tokens since, download bytes since, load times in the last hour)."""


class MemoryCounters:
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
                # Reservations still open count against the new day too.
                fresh.tokens_today += sum(h.amount for h in counters.tokens if not h.settled)
            fresh.loads = deque(t for t in loads if t > now - 3600)
            counters = self._keys[key_id] = fresh
        while counters.requests and counters.requests[0] <= now - 60:
            counters.requests.popleft()
        while counters.tokens and counters.tokens[0].at <= now - 60 and counters.tokens[0].settled:
            counters.tokens.popleft()
        while counters.loads and counters.loads[0] <= now - 3600:
            counters.loads.popleft()
        return counters

    def snapshot(self, key_id: str, now: float) -> UsageSnapshot:
        """This key's usage at ``now``; open reservations count as used."""
        c = self._get(key_id, now)
        return UsageSnapshot(
            recent_requests=tuple(c.requests),
            # An open reservation stays in the window until it is settled.
            recent_tokens=tuple(
                (h.at if h.settled else max(h.at, now), h.amount) for h in c.tokens
            ),
            concurrent=c.concurrent,
            tokens_today=c.tokens_today,
            recent_loads=tuple(c.loads),
            download_bytes_today=c.download_bytes_today,
        )

    def admit(
        self, key_id: str, now: float, *, load: bool, tokens: int = 0, limits: Limits | None = None
    ) -> TokenHold:
        """Count a request that policy allowed: it starts now, holds a slot and reserves
        ``tokens`` until its hold is settled.  ``limits`` is not checked again: in one
        process nothing runs between the snapshot the policies read and this count."""
        c = self._get(key_id, now)
        c.requests.append(now)
        c.concurrent += 1
        if load:
            c.loads.append(now)
        return self.reserve_tokens(key_id, tokens, now)

    def reserve_tokens(self, key_id: str, tokens: int, now: float) -> TokenHold:
        c = self._get(key_id, now)
        hold = TokenHold(self, key_id, now, max(0, tokens))
        c.tokens.append(hold)
        c.tokens_today += hold.amount
        return hold

    def _settle(self, hold: TokenHold, real: int) -> None:
        c = self._keys.get(hold.key_id)
        if c is None:
            return
        # The real count is committed now, so it belongs to today even for a hold
        # reserved yesterday (which the rollover carried into today's total).
        c.tokens_today = max(0, c.tokens_today + real - hold.amount)
        hold.amount = real

    def finish(self, hold: interfaces.TokenHold) -> None:
        """Release the concurrency slot ``admit`` took with ``hold`` (first call counts)."""
        assert isinstance(hold, TokenHold), "a hold of these counters"
        if hold.finished:
            return
        hold.finished = True
        c = self._keys.get(hold.key_id)
        if c is not None and c.concurrent > 0:
            c.concurrent -= 1

    def charge_download(self, key_id: str, nbytes: int, now: float) -> None:
        self._get(key_id, now).download_bytes_today += nbytes

    def settle_ref(self, key_id: str, ref: str, real: int) -> None:
        """Nothing to do: no other gateway holds tokens in this process's memory."""

    def unavailable(self) -> str | None:
        return None

    def close(self) -> None:
        """Nothing to close (the counters live and die with the process)."""
