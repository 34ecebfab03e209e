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
class Serving:
    """How a ready model serves its running requests: the decoder its worker chose
    (and why), the batch, the prompts being prefilled, and the KV cache reserved by
    the registry (tokens) and used by the worker (bytes)."""

    decoding: str
    decoding_reason: str
    batch: int
    prefilling: int
    waiting: int  # waiting in the worker for KV budget (the registry's estimate fell short)
    kv_budget_tokens: int
    kv_reserved_tokens: int
    kv_used_bytes: int
    longest_pause: float  # seconds between two tokens of a running stream, last minute


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
    serving: Serving | None = None
    keep_alive: float | None = None  # seconds it stays loaded once idle (negative: for ever)
