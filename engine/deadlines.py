"""Which models are past a deadline, decided without side effects.

Every state has a deadline (SPEC §3, self-check): a load that makes no
progress for ``load_timeout``, a drain longer than ``drain_timeout``, a worker
still alive ``unload_timeout`` (plus one second of grace) after it was asked
to stop, and a ready model idle past its ``keep_alive``.  ``plan_deadlines``
looks at plain snapshots of the models and returns what to do; the registry's
watchdog carries the actions out (and logs and counts them).  No clock read,
no I/O here: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.config import RegistryConfig
from engine.states import ModelState


@dataclass(frozen=True)
class SlotSnapshot:
    """What the deadline check needs to know about one model."""

    model_id: str
    state: ModelState
    state_since: float
    last_progress: float | None = None  # when the load last grew its resident memory
    leases: int = 0
    queued: int = 0
    pinned: bool = False
    keep_alive: float | None = None  # a request's override, else the model's own; None: default
    last_used: float | None = None


@dataclass(frozen=True)
class FailStalledLoad:
    """Fail the load (its waiters get ``reason``) and kill its worker."""

    model_id: str
    reason: str


@dataclass(frozen=True)
class CancelDrain:
    """Cancel the requests still running (they get ``reason``), drop their leases, unload."""

    model_id: str
    reason: str


@dataclass(frozen=True)
class KillUnload:
    """Kill a worker that did not stop when asked."""

    model_id: str


@dataclass(frozen=True)
class IdleUnload:
    """Drain (and so unload) a model idle past its ``keep_alive``."""

    model_id: str


DeadlineAction = FailStalledLoad | CancelDrain | KillUnload | IdleUnload


def plan_deadlines(
    slots: Iterable[SlotSnapshot], config: RegistryConfig, now: float
) -> list[DeadlineAction]:
    """The action due for each model past its deadline, in the order given."""
    actions: list[DeadlineAction] = []
    for slot in slots:
        action = _due(slot, config, now)
        if action is not None:
            actions.append(action)
    return actions


def _due(slot: SlotSnapshot, config: RegistryConfig, now: float) -> DeadlineAction | None:
    since = now - slot.state_since
    if slot.state is ModelState.LOADING:
        if now - (slot.last_progress or now) > config.load_timeout:
            return FailStalledLoad(
                slot.model_id,
                f"model {slot.model_id}: load made no progress for {config.load_timeout}s",
            )
    elif slot.state is ModelState.DRAINING:
        if since > config.drain_timeout:
            return CancelDrain(
                slot.model_id,
                f"model {slot.model_id} was unloaded: the drain timeout "
                f"({config.drain_timeout}s) ended this request",
            )
    elif slot.state is ModelState.UNLOADING:
        if since > config.unload_timeout + 1:
            return KillUnload(slot.model_id)
    elif slot.state is ModelState.READY and _idle_expired(slot, config, now):
        return IdleUnload(slot.model_id)
    return None


def _idle_expired(slot: SlotSnapshot, config: RegistryConfig, now: float) -> bool:
    keep_alive = config.keep_alive if slot.keep_alive is None else slot.keep_alive
    if slot.pinned or keep_alive < 0 or slot.leases or slot.queued:
        return False
    return now - (slot.last_used or now) >= keep_alive
