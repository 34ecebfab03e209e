"""The engine registry: the one owner of model states, workers, leases and queues.

Every change of state happens here (the transitions themselves in its
``engine.lifecycle.Lifecycle``), in synchronous steps of the event loop:
``_schedule`` reads the whole picture and acts on it in one go, so no decision
is made on a state read earlier.  The decisions are pure functions:
``engine.refusals.refusal`` at the door, ``engine.scheduler.plan_load`` for
loads and evictions, ``engine.deadlines.plan_deadlines`` for deadlines.  Only a
request that may load (``may_load``) or the admin's ``request_load`` causes a
load; recovery after a worker crash is not a load.  Invariants: DESIGN.md.
The types other packages import from here are re-exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from engine.config import RegistryConfig as RegistryConfig
from engine.deadlines import plan_deadlines
from engine.errors import InsufficientMemory, ModelLoadFailed, ModelNotReady
from engine.events import EngineEvents, NullEvents
from engine.leases import Lease as Lease
from engine.lifecycle import Lifecycle
from engine.memory import MemoryEstimateError, MemoryNeed, estimate
from engine.refusals import Arrival, never_fits, not_permitted, refusal
from engine.scheduler import Admit, Evict, NeverFits, Wait, plan_load
from engine.slots import Slot, Waiter
from engine.states import HOLDING as HOLDING
from engine.states import ModelState as ModelState
from engine.states import ModelStatus as ModelStatus
from engine.states import WaitingRequest as WaitingRequest
from engine.store import ModelSpec, ModelStore
from engine.watchdog import Watchdog
from engine.workers import SpawnWorker as SpawnWorker
from engine.workers import Worker as Worker
from engine.workers import WorkerSource
from engine.workers import spawn_process as spawn_process

log = logging.getLogger("engine.registry")

ADMIN = "admin"  # the caller tag of the admin's own load (``request_load``)


class Registry:
    def __init__(
        self,
        store: ModelStore,
        config: RegistryConfig,
        spawn: SpawnWorker = spawn_process,
        clock: Callable[[], float] = time.monotonic,
        events: EngineEvents | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._events = events or NullEvents()
        self._slots: dict[str, Slot] = {}
        self._workers = WorkerSource(
            spawn, spare=config.spare_worker, stop_timeout=config.stop_timeout
        )
        self._lifecycle = Lifecycle(
            self._slots,
            config,
            clock,
            self._events,
            self._workers,
            settle=self._schedule,
            fail_waiters=self._fail_waiters,
        )
        self._watchdog = Watchdog(self.check_deadlines, config.tick, clock)

    @property
    def _closed(self) -> bool:
        return self._lifecycle.closed

    # --- snapshots -----------------------------------------------------------

    def _slot(self, model_id: str) -> Slot:
        slot = self._slots.get(model_id)
        if slot is None:
            slot = self._slots[model_id] = Slot(self._store.specs[model_id])
        return slot

    def status(self, model_id: str) -> ModelStatus:
        return self._slot(model_id).status(self._clock(), self._config.keep_alive)

    def refresh(self, spec: ModelSpec) -> None:
        """Take a new version of a model's spec (its files just arrived on disk)."""
        slot = self._slots.get(spec.id)
        if slot is not None and slot.state in (ModelState.ABSENT, ModelState.FAILED):
            slot.spec = spec
            slot.need = None

    def statuses(self) -> list[ModelStatus]:
        return [self.status(spec.id) for spec in self._store.all()]

    @property
    def memory_budget(self) -> int:
        return self._config.memory_budget

    def pinned_bytes(self, exclude: str | None = None) -> int:
        """Memory held by pinned models (which no eviction can free)."""
        return sum(
            s.need.total
            for s in self._slots.values()
            if s.spec.id != exclude and s.spec.pinned and s.state in HOLDING and s.need
        )

    def typical_request_seconds(self) -> float:
        """The mean duration of recent requests over all models (10 s before any)."""
        durations = [d for s in self._slots.values() for d in s.durations]
        return sum(durations) / len(durations) if durations else 10.0

    def need(self, model_id: str) -> MemoryNeed:
        """The memory the model needs (estimated once from its files)."""
        slot = self._slot(model_id)
        if slot.need is None:
            slot.need = estimate(
                slot.spec.path,
                context_length=slot.spec.context_length,
                overhead=self._config.worker_overhead,
                sequences=self._config.max_concurrent,
                kv_budget=slot.spec.kv_budget,
            )
        return slot.need

    @property
    def wedged(self) -> bool:
        """True when the watchdog has not run for a long time: states are not being resolved."""
        return self._watchdog.wedged

    @property
    def memory_used(self) -> int:
        return self._lifecycle.memory_used

    # --- leases --------------------------------------------------------------

    def precheck(self, model_id: str, caller: str | None = None, *, may_load: bool = True) -> None:
        """Raise what ``acquire`` would raise at once: may not load, never fits,
        the caller's share held (when ``caller`` is given), or queue full."""
        self._check_admissible(self._slot(model_id), caller, may_load)

    async def acquire(
        self,
        model_id: str,
        caller: str = "-",
        wait: float | None = None,
        *,
        may_load: bool = True,
        kv_row: int = 0,
        kv_choices: int = 1,
        keep_alive: float | None = None,
    ) -> Lease:
        """Wait (up to ``wait``, default ``load_wait``) for ``model_id`` and lease it,
        reserving ``kv_row`` tokens of its KV budget for each of ``kv_choices``
        sequences (a request that would overflow the budget waits in the fair queue
        until running requests release enough).

        ``keep_alive`` (seconds; negative: for ever; 0: unload once idle), when
        given, becomes the model's keep-alive as this request gets its lease, until
        its worker goes away; ``None`` leaves it as it is.  A request that never
        gets its lease (timed out, cancelled) changes nothing.

        Raises before anything is unloaded when the model can never fit, and at
        once when this request may not load a model that is not loaded
        (``LoadNotPermitted``), when the caller holds its share of the model
        (``CallerBusy``) or when a queue is full (``ServerBusy``).  Only a
        request with ``may_load`` causes a load; one without rides along on a
        load under way or waits for a drain, and is refused if the model ends
        up absent.  The caller must ``release`` the lease.
        """
        if self._closed:
            raise ModelLoadFailed("the gateway is shutting down")
        self._ensure_watchdog()
        slot = self._slot(model_id)
        self._check_admissible(slot, caller, may_load)
        future = asyncio.get_running_loop().create_future()
        waiter = Waiter(
            caller,
            future,
            self._clock(),
            may_load=may_load,
            kv_row=kv_row,
            kv_choices=kv_choices,
            keep_alive=keep_alive,
        )
        slot.queue.push(caller, waiter)
        self._events.queue_changed(model_id, len(slot.queue))
        self._schedule()
        try:
            return await asyncio.wait_for(
                asyncio.shield(waiter.future), self._config.load_wait if wait is None else wait
            )
        except TimeoutError:
            slot.queue.remove(waiter)
            self._events.queue_changed(model_id, len(slot.queue))
            raise ModelNotReady(
                f"model {model_id} is not ready ({waiter.reason}); retry shortly",
                retry_after=self._estimated_wait(slot),
            ) from None
        except BaseException:
            # Cancelled (client gone): give up the place or the lease it just got.
            if slot.queue.remove(waiter):
                self._events.queue_changed(model_id, len(slot.queue))
            elif waiter.future.done() and not waiter.future.exception():
                self.release(waiter.future.result())
            raise
        finally:
            self._events.waited(model_id, self._clock() - waiter.enqueued)

    def would_start_now(self, model_id: str, kv_row: int = 0, kv_choices: int = 1) -> bool:
        """Whether a request reserving ``kv_row`` tokens for each of ``kv_choices``
        would get a lease at once: the model is ready, nobody waits before it, and a
        slot and the KV cache are free."""
        slot = self._slot(model_id)
        return (
            slot.state is ModelState.READY
            and not len(slot.queue)
            and len(slot.leases) < self._config.max_concurrent
            and slot.kv_fits(kv_choices, kv_row)
        )

    def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        slot = self._slot(lease.model_id)
        slot.leases.discard(lease)
        now = self._clock()
        slot.last_used = now
        slot.durations.append(now - lease.started)
        self._events.in_flight(lease.model_id, len(slot.leases))
        self._events.serving(lease.model_id, slot.serving())
        if slot.keep_alive(self._config.keep_alive) == 0 and not self._closed:
            self.check_deadlines()  # idle at keep_alive 0: unload now, not at the next tick
        else:
            self._schedule()

    @contextlib.asynccontextmanager
    async def lease(
        self, model_id: str, caller: str = "-", *, may_load: bool = True
    ) -> AsyncIterator[Lease]:
        """``acquire`` and ``release`` around a block."""
        lease = await self.acquire(model_id, caller, may_load=may_load)
        try:
            yield lease
        finally:
            self.release(lease)

    def _check_admissible(self, slot: Slot, caller: str | None, may_load: bool) -> None:
        need = self._need_or_fail(slot)
        now, concurrent = self._clock(), self._config.max_concurrent
        held = None if caller is None else slot.held_by(caller)
        arrival = Arrival(
            slot.spec.id,
            need,
            self.pinned_bytes(exclude=slot.spec.id),
            load_refused=slot.state in (ModelState.ABSENT, ModelState.FAILED)
            and not slot.load_permitted(may_load),
            held=held,
            queued=len(slot.queue),
            queued_total=sum(len(s.queue) for s in self._slots.values()),
            queue_wait=slot.queue_wait(now, concurrent),
            caller_wait=slot.caller_wait(held or 0, now, concurrent),
        )
        error = refusal(arrival, self._config)
        if error is not None:
            raise error

    def _need_or_fail(self, slot: Slot) -> MemoryNeed:
        try:
            return self.need(slot.spec.id)
        except MemoryEstimateError as exc:
            raise ModelLoadFailed(f"model {slot.spec.id} cannot be loaded: {exc}") from exc

    def _estimated_wait(self, slot: Slot) -> float:
        self.need(slot.spec.id)  # estimated once; a load's expected time comes from its weights
        return slot.queue_wait(self._clock(), self._config.max_concurrent)

    # --- scheduling ----------------------------------------------------------

    def _schedule(self) -> None:
        """Look at every model with waiting requests and move each forward."""
        if self._closed:
            return
        for slot in list(self._slots.values()):
            if slot.state is ModelState.DRAINING and not slot.leases:
                self._lifecycle.start_unload(slot)
        waiting = [s for s in self._slots.values() if len(s.queue)]
        waiting.sort(key=lambda s: min(w.enqueued for w in s.queue))
        for slot in waiting:
            self._advance(slot)

    def _advance(self, slot: Slot) -> None:
        if slot.state is ModelState.READY:
            self._admit(slot)
        elif slot.state in (ModelState.ABSENT, ModelState.FAILED):
            if slot.load_permitted():
                self._plan(slot)
            else:  # only requests that may not load it: nothing is loaded or evicted
                self._fail_waiters(slot, not_permitted(slot.spec.id))
        elif slot.state is ModelState.LOADING:
            self._set_reason(slot, f"{slot.spec.id} is loading")
        else:
            then = "it will load again" if slot.load_permitted() else "none here may load it again"
            self._set_reason(slot, f"{slot.spec.id} is {slot.state.value}; {then}")

    def _admit(self, slot: Slot) -> None:
        assert slot.worker is not None
        kv_full = False
        while len(slot.queue) and len(slot.leases) < self._config.max_concurrent:
            waiter = slot.queue.peek()
            if not waiter.future.done() and not slot.kv_fits(waiter.kv_choices, waiter.kv_row):
                kv_full = True  # the next in turn waits for KV cache; none overtakes it
                break
            slot.queue.pop()
            if waiter.future.done():
                continue
            lease = Lease(
                slot.spec.id,
                slot.worker,
                waiter.caller,
                started=self._clock(),
                kv_row=waiter.kv_row,
                kv_choices=waiter.kv_choices,
            )
            slot.leases.add(lease)
            if waiter.keep_alive is not None:
                slot.keep_alive_override = waiter.keep_alive
            waiter.future.set_result(lease)
        self._events.queue_changed(slot.spec.id, len(slot.queue))
        self._events.in_flight(slot.spec.id, len(slot.leases))
        self._events.serving(slot.spec.id, slot.serving())
        if kv_full:
            self._set_reason(
                slot,
                f"{slot.spec.id}'s KV cache is reserved ({slot.kv_reserved} of "
                f"{slot.kv_budget} tokens, {len(slot.leases)} running)",
            )
        elif len(slot.queue):
            self._set_reason(slot, f"{slot.spec.id} is busy ({len(slot.leases)} running)")

    def _plan(self, slot: Slot) -> None:
        plan = plan_load(
            slot.spec.id,
            self.need(slot.spec.id).total,
            [s.resident() for s in self._slots.values() if s.state in HOLDING],
            budget=self._config.memory_budget,
            max_loaded=self._config.max_loaded_models or None,
            now=self._clock(),
            min_residency=self._config.min_residency,
        )
        if isinstance(plan, Admit):
            self._lifecycle.start_load(slot)
        elif isinstance(plan, Evict):
            self._events.swapped(slot.spec.id)
            for model_id in plan.idle + plan.busy:
                self._events.evicted(model_id, "busy" if model_id in plan.busy else "idle")
                self._lifecycle.drain(self._slots[model_id], f"making room for {slot.spec.id}")
            self._set_reason(slot, f"waiting for {', '.join(plan.idle + plan.busy)} to unload")
        elif isinstance(plan, Wait):
            self._set_reason(slot, plan.reason)
        elif isinstance(plan, NeverFits):  # pinned models grew since the request was admitted
            error = InsufficientMemory(
                f"model {slot.spec.id} {plan.message}",
                need=plan.need,
                budget=plan.budget,
                pinned=plan.pinned,
            )
            self._fail_waiters(slot, error)

    def _set_reason(self, slot: Slot, reason: str) -> None:
        for waiter in slot.queue:
            waiter.reason = reason

    def _fail_waiters(self, slot: Slot, error: Exception) -> None:
        while len(slot.queue):
            waiter = slot.queue.pop()
            if not waiter.future.done():
                waiter.future.set_exception(error)
                waiter.future.exception()  # retrieved: the waiter may have timed out already
        self._events.queue_changed(slot.spec.id, 0)

    # --- administration ----------------------------------------------------------

    async def start(self) -> None:
        """Start the watchdog (and the spare worker when configured)."""
        self._ensure_watchdog()
        if self._config.spare_worker:
            self._workers.warm()

    def request_load(self, model_id: str) -> None:
        """Load ``model_id`` as if a request that may load had come for it (the admin's load)."""
        self._ensure_watchdog()
        slot = self._slot(model_id)
        pinned = self.pinned_bytes(exclude=model_id)
        error = never_fits(model_id, self._need_or_fail(slot), pinned, self._config.memory_budget)
        if error is not None:
            raise error
        if slot.state is ModelState.READY:
            return
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        future.add_done_callback(
            lambda f: None if f.cancelled() or f.exception() else self.release(f.result())
        )
        slot.queue.push(ADMIN, Waiter(ADMIN, future, self._clock(), may_load=True, internal=True))
        self._schedule()

    def request_unload(self, model_id: str) -> None:
        """Drain ``model_id`` and unload it (its in-flight requests finish first);
        a load in progress is cancelled.  Afterwards only a request that may load
        brings it back (a crashed model is no longer recovered for anyone)."""
        slot = self._slot(model_id)
        if slot.state is ModelState.READY:
            self._lifecycle.drain(slot, reason="unload requested")
        elif slot.state is ModelState.LOADING:
            reason = f"the load of {model_id} was cancelled by an operator"
            self._lifecycle.cancel_load(slot, reason)
        elif slot.recoverable:
            slot.crashed = False
            self._schedule()

    def set_keep_alive(self, model_id: str, seconds: float) -> bool:
        """Keep a ready or loading model ``seconds`` after it is next idle (negative:
        for ever; 0: unload as soon as it is idle, at once if it is idle now), until
        its worker goes away.  Returns whether it was ready or loading; otherwise
        nothing changes."""
        slot = self._slots.get(model_id)
        if self._closed or slot is None:
            return False
        if slot.state not in (ModelState.READY, ModelState.LOADING):
            return False
        slot.keep_alive_override = seconds
        self.check_deadlines()
        return True

    # --- deadlines -----------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        if not self._closed:
            self._watchdog.ensure()

    def check_deadlines(self) -> None:
        """Resolve every state past its deadline; unload idle models past keep_alive."""
        snapshots = [slot.deadline_snapshot() for slot in self._slots.values()]
        for action in plan_deadlines(snapshots, self._config, self._clock()):
            self._lifecycle.carry_out(self._slots[action.model_id], action)
        self._schedule()

    async def close(self) -> None:
        """Stop every worker (at gateway shutdown)."""
        self._lifecycle.closed = True
        self._watchdog.cancel()
        spare = self._workers.close()
        for slot in self._slots.values():
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()
            self._fail_waiters(slot, ModelLoadFailed("the gateway is shutting down"))
        workers = [s.worker for s in self._slots.values() if s.worker is not None]
        if spare is not None:
            workers.append(spare)
        await asyncio.gather(
            *(w.stop(self._config.stop_timeout) for w in workers), return_exceptions=True
        )
