"""The swap state machine: moving a model through its states with its worker.

``absent -> loading -> ready -> draining -> unloading -> absent``, plus
``failed``.  The registry owns one ``Lifecycle`` and is its only caller, so
every state change still has one owner; the registry decides *when* (from its
queues, ``plan_load`` and ``plan_deadlines``), the lifecycle does the change
and runs the load and unload tasks.  When a task ends it calls ``settle``
(the registry's ``_schedule``) so waiting requests move on; a failed load
hands its waiters to ``fail_waiters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from engine.config import RegistryConfig
from engine.deadlines import CancelDrain, DeadlineAction, FailStalledLoad, IdleUnload, KillUnload
from engine.errors import ModelLoadFailed
from engine.events import EngineEvents
from engine.slots import Slot
from engine.states import HOLDING, ModelState
from engine.workers import Worker, WorkerSource

log = logging.getLogger("engine.registry")


class Lifecycle:
    def __init__(
        self,
        slots: dict[str, Slot],
        config: RegistryConfig,
        clock: Callable[[], float],
        events: EngineEvents,
        workers: WorkerSource,
        *,
        settle: Callable[[], None],
        fail_waiters: Callable[[Slot, Exception], None],
    ) -> None:
        self._slots = slots
        self._config = config
        self._clock = clock
        self._events = events
        self._workers = workers
        self._settle = settle
        self._fail_waiters = fail_waiters
        self.closed = False

    @property
    def memory_used(self) -> int:
        return sum(s.need.total for s in self._slots.values() if s.state in HOLDING and s.need)

    def enter(self, slot: Slot, state: ModelState) -> None:
        slot.state = state
        slot.state_since = self._clock()
        if state in (ModelState.ABSENT, ModelState.FAILED):
            slot.keep_alive_override = None  # its worker is gone: the next load starts afresh
        self._events.state_changed(slot.spec.id, state.value)
        self._events.memory(self.memory_used, self._config.memory_budget)
        self._events.serving(slot.spec.id, slot.serving())

    # --- loading ---------------------------------------------------------------

    def start_load(self, slot: Slot) -> None:
        now = self._clock()
        self.enter(slot, ModelState.LOADING)
        slot.error = None
        slot.load_started = slot.last_progress = now
        slot.progress_bytes = 0
        slot.loads += 1
        slot.crashed = False
        for waiter in slot.queue:
            waiter.reason = f"{slot.spec.id} is loading"
        slot.task = asyncio.get_running_loop().create_task(self._load(slot))

    async def _load(self, slot: Slot) -> None:
        model_id = slot.spec.id
        worker: Worker | None = None
        started = self._clock()
        try:
            worker = await self._workers.take()
            worker.on_exit = lambda reason: self._worker_exited(slot, worker, reason)
            slot.worker = worker
            worker.on_stats = lambda: self._events.serving(model_id, slot.serving())
            loaded = await worker.load(
                model_id,
                slot.spec.path,
                prompt_cache_size=self._config.prompt_cache_size,
                on_progress=lambda n: self._load_progress(slot, n),
                decoding=(slot.spec.decoding or self._config.decoding),  # type: ignore[arg-type]
                kv_budget_tokens=slot.kv_budget,
            )
        except asyncio.CancelledError:
            if worker is not None:
                worker.kill()
            raise
        except Exception as exc:
            self.fail_load(slot, f"model {model_id} failed to load: {exc}")
            if worker is not None:
                with contextlib.suppress(Exception):
                    await worker.stop(self._config.unload_timeout)
            return
        if slot.state is not ModelState.LOADING or slot.worker is not worker:
            return  # the load was failed meanwhile (stalled, or the worker died)
        slot.load_seconds = self._clock() - started
        slot.memory_bytes = loaded.memory_bytes
        slot.decoding, slot.decoding_reason = loaded.decoding, loaded.decoding_reason
        slot.ready_since = slot.last_used = self._clock()
        self.enter(slot, ModelState.READY)
        self._events.loaded(model_id, "ok", slot.load_seconds, loaded.memory_bytes)
        log.info("loaded %s in %.1fs", model_id, slot.load_seconds)
        self._settle()

    def _load_progress(self, slot: Slot, resident: int) -> None:
        if resident > slot.progress_bytes:
            slot.progress_bytes = resident
            slot.last_progress = self._clock()

    def fail_load(self, slot: Slot, reason: str) -> None:
        log.error("%s", reason)
        slot.worker = None
        slot.error = reason
        self.enter(slot, ModelState.FAILED)
        self._events.loaded(slot.spec.id, "failed", self._clock() - (slot.load_started or 0), 0)
        self._fail_waiters(slot, ModelLoadFailed(reason))
        self._settle()

    def cancel_load(self, slot: Slot, reason: str) -> None:
        """End a load in progress: its task cancelled, its worker killed, its waiters told."""
        worker = slot.worker
        if slot.task is not None:
            slot.task.cancel()
        self.fail_load(slot, reason)
        if worker is not None:
            worker.kill()

    # --- unloading -------------------------------------------------------------

    def drain(self, slot: Slot, reason: str) -> None:
        """Stop admitting to ``slot``; unload it once its leases end."""
        if slot.state is not ModelState.READY:
            return
        log.info("draining %s (%s, %d in flight)", slot.spec.id, reason, len(slot.leases))
        self.enter(slot, ModelState.DRAINING)
        if not slot.leases:
            self.start_unload(slot)

    def start_unload(self, slot: Slot) -> None:
        if slot.state is ModelState.UNLOADING:
            return
        self._events.drained(slot.spec.id, self._clock() - slot.state_since)
        self.enter(slot, ModelState.UNLOADING)
        slot.task = asyncio.get_running_loop().create_task(self._unload(slot))

    async def _unload(self, slot: Slot) -> None:
        worker = slot.worker
        if worker is not None:
            worker.on_exit = None
            await worker.stop(self._config.unload_timeout)
        slot.worker = None
        slot.ready_since = None
        slot.memory_bytes = 0
        self.enter(slot, ModelState.ABSENT)
        self._events.unloaded(slot.spec.id)
        log.info("unloaded %s", slot.spec.id)
        self._settle()

    def _worker_exited(self, slot: Slot, worker: Worker | None, reason: str) -> None:
        if slot.worker is not worker or self.closed:
            return
        self._events.worker_crashed(slot.spec.id)
        if slot.state is ModelState.LOADING:
            self.fail_load(slot, f"model {slot.spec.id}: worker exited while loading ({reason})")
            return
        log.error("worker of %s exited unexpectedly: %s", slot.spec.id, reason)
        slot.worker = None
        slot.error = f"worker exited ({reason})"
        slot.crashed = True
        slot.ready_since = None
        slot.memory_bytes = 0
        self.enter(slot, ModelState.FAILED)
        self._settle()

    # --- deadlines -------------------------------------------------------------

    def carry_out(self, slot: Slot, action: DeadlineAction) -> None:
        """Resolve a state past its deadline (``engine.deadlines`` decided it); an
        action whose state has changed since it was decided is moot."""
        model_id = slot.spec.id
        if isinstance(action, FailStalledLoad) and slot.state is ModelState.LOADING:
            self._events.deadline_missed(model_id, "load")
            worker = slot.worker
            self.fail_load(slot, action.reason)
            if worker is not None:
                worker.kill()
        elif isinstance(action, CancelDrain) and slot.state is ModelState.DRAINING:
            self._events.deadline_missed(model_id, "drain")
            if slot.worker is not None:
                self._events.drain_cancelled(model_id, slot.worker.cancel_all(action.reason))
            for lease in list(slot.leases):
                lease.released = True
            slot.leases.clear()
            self.start_unload(slot)
        elif isinstance(action, KillUnload) and slot.state is ModelState.UNLOADING:
            self._events.deadline_missed(model_id, "unload")
            if slot.worker is not None:
                slot.worker.kill()
        elif isinstance(action, IdleUnload):
            self.drain(slot, reason="keep_alive expired")
