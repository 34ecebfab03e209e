"""Room on the server: whether a model fits the memory budget, a download the disk.

The gateway measures (the registry's memory estimate, the budget, what pinned
models hold, free disk space) and passes plain numbers in; these checks only
compare them.  Running out of room is the server's condition, not the key's,
so the answer is 507 whoever asks, with the numbers in bytes and in
human-readable units.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.decision import ALLOW, INSUFFICIENT_MEMORY, INSUFFICIENT_STORAGE, Decision, Deny

_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


@dataclass(frozen=True)
class ModelResources:
    """What the requested model needs and what the server can give it.

    Attributes:
        model_id: the catalogue id.
        loaded: the model is loaded or loading (no new memory is needed).
        on_disk: the model's files are present, so it can be loaded.
        need_bytes: the memory estimate of loading it, ``None`` when unknown
            (unreadable weights: the load itself reports that).
        budget_bytes: the memory budget for all loaded models.
        pinned_bytes: memory held by pinned models other than this one (they
            are never unloaded to make room).
    """

    model_id: str
    loaded: bool
    on_disk: bool
    need_bytes: int | None
    budget_bytes: int
    pinned_bytes: int


def format_bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit it reaches: ``"1.5 GiB"``, ``"512 B"``."""
    for unit, size in _UNITS:
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _amount(n: int) -> str:
    return f"{format_bytes(n)} ({n} bytes)"


def check_memory(res: ModelResources) -> Decision:
    """A model that is not loaded must fit the budget beside the pinned models.

    Denied (507 ``insufficient_memory``) when ``need_bytes + pinned_bytes >
    budget_bytes``: it could never be loaded, whatever else is unloaded, so
    nothing should be.  A loaded (or loading) model, or one whose need is
    unknown, passes.
    """
    if res.loaded or res.need_bytes is None:
        return ALLOW
    need, budget, pinned = res.need_bytes, res.budget_bytes, res.pinned_bytes
    if need + pinned <= budget:
        return ALLOW
    held = f", of which pinned models hold {_amount(pinned)}" if pinned else ""
    return Deny(
        INSUFFICIENT_MEMORY,
        f"Model {res.model_id} needs {_amount(need)} of memory; "
        f"the memory budget is {_amount(budget)}{held}, so it can never be loaded.",
        507,
        details={
            "model": res.model_id,
            "need_bytes": need,
            "budget_bytes": budget,
            "pinned_bytes": pinned,
        },
    )


def check_storage(size_bytes: int, free_bytes: int, what: str = "The download") -> Decision:
    """A download of ``size_bytes`` must fit the ``free_bytes`` of the models disk.

    Denied (507 ``insufficient_storage``) when it does not, with both numbers.
    ``what`` names the download in the message (e.g. ``"Repository org/name"``).
    """
    if size_bytes <= free_bytes:
        return ALLOW
    return Deny(
        INSUFFICIENT_STORAGE,
        f"{what} needs {_amount(size_bytes)} of disk; only {_amount(free_bytes)} is free.",
        507,
        details={"size_bytes": size_bytes, "free_bytes": free_bytes},
    )
