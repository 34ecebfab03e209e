"""Reservations: what a request may hold against its key's token limits while it runs.

A request reserves, at admission, its prompt plus every completion token it
may generate (``max_tokens`` per choice); the gateway settles the reservation
to the real count when the request ends.  ``affordable_max_tokens`` lowers the
completion ceiling so that the reservation fits the whole per-minute limit and
what is left of the day's quota: the response then ends with ``length`` at
the limit instead of running past it.  The checks in ``policies.limits`` then
decide on the clamped reservation.
"""

from __future__ import annotations

from policies.principal import Limits
from policies.usage import UsageSnapshot


def affordable_max_tokens(
    limits: Limits, usage: UsageSnapshot, prompt_tokens: int, max_tokens: int, n: int = 1
) -> int:
    """The completion ceiling a request may reserve: ``max_tokens`` lowered so that
    ``prompt_tokens + ceiling * n`` fits the whole per-minute limit and what is left
    of the day's quota.  At least 1 (a request that cannot afford even one token per
    choice is then denied by the checks, with the right answer and wait)."""
    ceiling = max_tokens
    n = max(1, n)
    if limits.tokens_per_minute is not None and limits.tokens_per_minute > 0:
        ceiling = min(ceiling, (limits.tokens_per_minute - prompt_tokens) // n)
    if limits.tokens_per_day is not None and limits.tokens_per_day > 0:
        left = limits.tokens_per_day - usage.tokens_today
        ceiling = min(ceiling, (left - prompt_tokens) // n)
    return max(1, ceiling)
