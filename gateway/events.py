"""Recent refusals and errors of this gateway, for the console (since it started).

``handle_exception`` records every error response here once: when, which key (if
it was known), the route, the status and code.  Bounded: the last ``KEEP`` events
and, per hour and code, counts for the last ``HOURS`` hours.  Prometheus keeps the
long history (``gateway_policy_denials_total``).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

KEEP = 500
HOURS = 48


@dataclass(frozen=True)
class Event:
    at: float
    key_id: str | None
    route: str
    status: int
    code: str
    message: str


class RecentEvents:
    """One writer: the event loop."""

    def __init__(self) -> None:
        self._events: deque[Event] = deque(maxlen=KEEP)
        self._hourly: dict[int, Counter[str]] = {}

    def record(self, event: Event) -> None:
        self._events.append(event)
        hour = int(event.at // 3600)
        self._hourly.setdefault(hour, Counter())[event.code] += 1
        for old in [h for h in self._hourly if h <= hour - HOURS]:
            del self._hourly[old]

    def recent(self, limit: int = 100, key_id: str | None = None) -> list[Event]:
        """Newest first; only ``key_id``'s when given."""
        events = [e for e in reversed(self._events) if key_id is None or e.key_id == key_id]
        return events[:limit]

    def hourly(self, now: float, hours: int = 24) -> tuple[list[int], dict[str, list[int]]]:
        """The last ``hours`` hours (epoch hour numbers, oldest first) and per code the
        count in each."""
        last = int(now // 3600)
        span = list(range(last - hours + 1, last + 1))
        codes = sorted({c for h in span for c in self._hourly.get(h, {})})
        return span, {c: [self._hourly.get(h, Counter())[c] for h in span] for c in codes}
