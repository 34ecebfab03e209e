"""Sizes as operators write them: ``"48GiB"``, ``"500 MB"``, ``"1024"``, or a fraction of RAM."""

from __future__ import annotations


class SettingsError(ValueError):
    """Invalid configuration; the message names the field."""


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str, field: str) -> int:
    """``"48GiB"``, ``"500 MB"`` or ``"1024"`` as bytes."""
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = cleaned[len(number) :]
    try:
        value = float(number)
    except ValueError:
        raise SettingsError(f"{field}: {text!r} is not a size such as 48GiB") from None
    if unit not in _UNITS or value < 0:
        raise SettingsError(f"{field}: {text!r} is not a size such as 48GiB")
    return int(value * _UNITS[unit])


def memory_budget_bytes(text: str, *, physical: int) -> int:
    """The memory budget: a fraction of ``physical`` (``"0.75"``) or a size."""
    try:
        fraction = float(text)
    except ValueError:
        return parse_size(text, "engine.memory_budget")
    if 0 < fraction <= 1:
        return int(fraction * physical)
    if fraction > 1:
        return int(fraction)
    raise SettingsError(f"engine.memory_budget: {text!r} must be positive")
