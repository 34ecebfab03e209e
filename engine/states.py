"""What a model is doing, as the registry reports it: its state and snapshots.

``ModelState`` is the registry's state machine (drawn in ``engine/DESIGN.md``);
``ModelStatus`` and ``WaitingRequest`` are plain snapshots for the HTTP layer,
never live objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ModelState(StrEnum):
    ABSENT = "absent"
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    UNLOADING = "unloading"
    FAILED = "failed"


HOLDING = (ModelState.LOADING, ModelState.READY, ModelState.DRAINING, ModelState.UNLOADING)
"""The states in which a model's memory counts against the budget."""


@dataclass(frozen=True)
class WaitingRequest:
    caller: str
    waited: float
    reason: str


@dataclass(frozen=True)
class ModelStatus:
    """A snapshot of one model for the HTTP layer (never a live object)."""

    id: str
    state: ModelState
    leases: int
    queued: int
    need_bytes: int | None
    memory_bytes: int
    load_seconds: float | None
    idle_seconds: float | None
    resident_seconds: float | None
    pinned: bool
    error: str | None
    loads: int = 0
    pid: int | None = None
    crashed: bool = False  # failed because its worker died while serving
    waiting: tuple[WaitingRequest, ...] = ()
