"""Quota strings of the CLI and the admin API: ``"20GB/day"`` as bytes per day."""

from __future__ import annotations

from accounts.keys import MAX_LIMIT
from gateway.settings import SettingsError, parse_size


def parse_quota(text: str, field: str = "download quota") -> int:
    """``"20GB/day"`` as bytes per day; only ``/day`` is accepted.

    Raises ``SettingsError`` (a ``ValueError``) naming ``field``.
    """
    amount, sep, period = text.partition("/")
    if not sep or period.strip().lower() != "day":
        raise SettingsError(f"{field}: {text!r} is not a quota such as 20GB/day")
    try:
        size = parse_size(amount, field)
    except (OverflowError, ValueError):  # "infGB", "nanGB", "1e400GB"
        size = -1
    if not 0 <= size <= MAX_LIMIT:
        raise SettingsError(
            f"{field}: {text!r} is not a quota such as 20GB/day (at most {MAX_LIMIT} bytes)"
        )
    return size
