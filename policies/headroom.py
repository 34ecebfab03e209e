"""What is left of each of a key's limits: the figures a key holder reads (pure).

The same windows as ``policies.limits``: a sliding minute for requests and
tokens, a sliding hour for loads, the UTC day for tokens and download bytes.
``resets_at`` is when the oldest entry of a full window leaves it (or the next
UTC midnight for a day's quota), ``None`` when nothing is in use.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.principal import Limits
from policies.usage import UsageSnapshot
from policies.window import HOUR, MINUTE, amounts_in_window, in_window, next_utc_midnight


@dataclass(frozen=True)
class Headroom:
    name: str  # the limit's field in ``Limits``
    label: str
    used: int
    limit: int | None  # None: unlimited
    resets_at: float | None

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)


def headroom(limits: Limits, usage: UsageSnapshot, now: float) -> tuple[Headroom, ...]:
    requests = in_window(usage.recent_requests, now, MINUTE)
    tokens = amounts_in_window(usage.recent_tokens, now, MINUTE)
    loads = in_window(usage.recent_loads, now, HOUR)
    midnight = next_utc_midnight(now)
    return (
        Headroom(
            "requests_per_minute",
            "Requests per minute",
            len(requests),
            limits.requests_per_minute,
            requests[0] + MINUTE if requests else None,
        ),
        Headroom(
            "tokens_per_minute",
            "Tokens per minute",
            sum(n for _, n in tokens),
            limits.tokens_per_minute,
            tokens[0][0] + MINUTE if tokens else None,
        ),
        Headroom(
            "max_concurrent", "Requests at once", usage.concurrent, limits.max_concurrent, None
        ),
        Headroom(
            "tokens_per_day",
            "Tokens today (UTC)",
            usage.tokens_today,
            limits.tokens_per_day,
            midnight if usage.tokens_today else None,
        ),
        Headroom(
            "loads_per_hour",
            "Model loads per hour",
            len(loads),
            limits.loads_per_hour,
            loads[0] + HOUR if loads else None,
        ),
        Headroom(
            "download_bytes_per_day",
            "Download bytes today (UTC)",
            usage.download_bytes_today,
            limits.download_bytes_per_day,
            midnight if usage.download_bytes_today else None,
        ),
    )
