"""Pure decisions of the registry: may a model load now, and what must go first?

``plan_load`` takes a snapshot of the models that hold memory and returns one
of ``Admit``, ``Evict``, ``Wait`` or ``NeverFits``.  It reads no clock and does
no I/O; the registry carries out the plan and asks again when anything
changes.

Rules, in order:
1. A model that cannot fit even with every unpinned model gone never fits.
2. If the target fits beside what is resident (memory and ``max_loaded``), admit.
3. Otherwise free room from ready, unpinned models that have been resident at
   least ``min_residency``: idle ones first, least recently used first, then
   busy ones (which are drained), least recently used first.  Memory that is
   already being freed (draining, unloading) counts.
4. If that is not enough now, wait: for a load or an unload in progress, or
   for the residency of a model to expire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

HoldingState = Literal["loading", "ready", "draining", "unloading"]


@dataclass(frozen=True)
class Resident:
    """A model that holds (or is about to hold) memory."""

    id: str
    state: HoldingState
    need: int
    leases: int = 0
    pinned: bool = False
    ready_since: float | None = None
    last_used: float | None = None


@dataclass(frozen=True)
class Admit:
    pass


@dataclass(frozen=True)
class Evict:
    """Unload ``idle`` now; drain ``busy`` (stop admitting, finish, then unload)."""

    idle: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wait:
    reason: str
    until: float | None = None


@dataclass(frozen=True)
class NeverFits:
    need: int
    budget: int
    pinned: int

    @property
    def message(self) -> str:
        return (
            f"needs {self.need} bytes; the memory budget is {self.budget} bytes, "
            f"of which pinned models hold {self.pinned}"
        )


Plan = Admit | Evict | Wait | NeverFits


def plan_load(
    target: str,
    need: int,
    residents: Sequence[Resident],
    *,
    budget: int,
    max_loaded: int | None,
    now: float,
    min_residency: float,
) -> Plan:
    others = [r for r in residents if r.id != target]
    pinned = sum(r.need for r in others if r.pinned)
    if need + pinned > budget:
        return NeverFits(need, budget, pinned)

    used = sum(r.need for r in others)
    bytes_short = used + need - budget
    slots_short = 0 if max_loaded is None else len(others) + 1 - max_loaded
    if bytes_short <= 0 and slots_short <= 0:
        return Admit()

    freeing = [r for r in others if r.state in ("draining", "unloading")]
    freed_bytes = sum(r.need for r in freeing)
    freed_slots = len(freeing)
    if freed_bytes >= bytes_short and freed_slots >= slots_short:
        names = ", ".join(r.id for r in freeing)
        return Wait(f"waiting for {names} to unload")

    candidates = [r for r in others if r.state == "ready" and not r.pinned]
    eligible = [
        r for r in candidates if r.ready_since is None or r.ready_since + min_residency <= now
    ]
    order = sorted(eligible, key=lambda r: (r.leases > 0, r.last_used or 0.0))
    chosen: list[Resident] = []
    for resident in order:
        if freed_bytes >= bytes_short and freed_slots >= slots_short:
            break
        chosen.append(resident)
        freed_bytes += resident.need
        freed_slots += 1
    if freed_bytes >= bytes_short and freed_slots >= slots_short:
        return Evict(
            idle=tuple(r.id for r in chosen if r.leases == 0),
            busy=tuple(r.id for r in chosen if r.leases > 0),
        )

    young = [r for r in candidates if r not in eligible]
    if young:
        first = min(young, key=lambda r: r.ready_since or 0.0)
        until = (first.ready_since or now) + min_residency
        return Wait(f"{first.id} is within its minimum residency", until=until)
    loading = [r.id for r in others if r.state == "loading"]
    if loading:
        return Wait(f"waiting for {', '.join(loading)} to finish loading")
    return Wait("waiting for memory to be freed")
