"""Sliding windows and UTC periods: the time arithmetic behind every limit.

All times are epoch seconds passed in by the caller (``now``); nothing here
reads a clock.  An entry at time ``t`` is inside the window of length ``w``
ending at ``now`` when ``t > now - w``: it leaves the window at exactly
``t + w``.  Waits are never shorter than ``MIN_WAIT`` so a retry always lands
after the moment computed, not on it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
MIN_WAIT = 0.001
"""The shortest wait ever reported (one millisecond)."""


def in_window(times: Iterable[float], now: float, window: float) -> list[float]:
    """The times inside the window ending at ``now``, oldest first."""
    return sorted(t for t in times if t > now - window)


def wait_for_count(times: Iterable[float], now: float, window: float, limit: int) -> float:
    """Seconds until fewer than ``limit`` entries are left in the window.

    With ``count`` entries in the window (oldest first), the one at index
    ``count - limit`` is the last that must leave; it leaves at ``t + window``.
    Returns 0.0 when there is room already.  ``limit`` must be positive.
    """
    inside = in_window(times, now, window)
    excess = len(inside) - limit
    if excess < 0:
        return 0.0
    return max(MIN_WAIT, inside[excess] + window - now)


def amounts_in_window(
    entries: Iterable[tuple[float, int]], now: float, window: float
) -> list[tuple[float, int]]:
    """The ``(time, amount)`` entries inside the window ending at ``now``, oldest first."""
    return sorted((t, n) for t, n in entries if t > now - window)


def wait_for_amount(
    entries: Iterable[tuple[float, int]], now: float, window: float, limit: int, need: int
) -> float:
    """Seconds until ``need`` more fits: the amount left in the window plus ``need`` <= ``limit``.

    Walks the entries oldest first, dropping each as it leaves the window,
    until the rest plus ``need`` fits.  Returns 0.0 when it fits already.
    ``need`` must not exceed ``limit`` (once the window is empty it then fits).
    """
    inside = amounts_in_window(entries, now, window)
    used = sum(n for _, n in inside)
    if used + need <= limit:
        return 0.0
    for t, n in inside:
        used -= n
        if used + need <= limit:
            return max(MIN_WAIT, t + window - now)
    raise ValueError(f"need {need} exceeds the limit {limit}")


def day_start(now: float) -> float:
    """The start (epoch seconds) of the UTC day holding ``now``."""
    return (now // DAY) * DAY


def next_utc_midnight(now: float) -> float:
    """The first UTC midnight strictly after ``now`` (epoch seconds).

    Pure arithmetic: the epoch starts at a UTC midnight and UTC days have no
    leap seconds in POSIX time, so days are exactly 86400 s apart.
    """
    return (now // DAY + 1) * DAY


def utc_iso(when: float) -> str:
    """``when`` as ISO 8601 UTC to the second, e.g. ``2025-01-02T00:00:00Z``."""
    moment = dt.datetime.fromtimestamp(when, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
