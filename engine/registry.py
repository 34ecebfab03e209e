"""The engine registry: the one owner of model states, workers, leases and queues.

States: ``absent -> loading -> ready -> draining -> unloading -> absent``, and
``failed`` (with the reason) when a load fails or a worker dies.  Every change
of state happens here, in synchronous steps of the event loop: ``_schedule``
reads the whole picture and acts on it in one go, so no decision is ever made
on a state read earlier.  Load decisions come from the pure
``engine.scheduler.plan_load``.  The invariants and how each is kept are in
``engine/DESIGN.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from engine.errors import (
    InsufficientMemory,
    ModelLoadFailed,
    ModelNotReady,
    ServerBusy,
)
from engine.events import EngineEvents, NullEvents
from engine.fairqueue import FairQueue
from engine.memory import MemoryEstimateError, MemoryNeed, estimate, format_bytes
from engine.protocol import ChatMessage, Delta, Finished, Loaded, SamplingParams, Started
from engine.scheduler import Admit, Evict, NeverFits, Resident, Wait, plan_load
from engine.store import ModelSpec, ModelStore

log = logging.getLogger("engine.registry")


class ModelState(StrEnum):
    ABSENT = "absent"
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    UNLOADING = "unloading"
    FAILED = "failed"


HOLDING = (ModelState.LOADING, ModelState.READY, ModelState.DRAINING, ModelState.UNLOADING)


class Worker(Protocol):
    """What the registry needs of a worker (``WorkerProcess`` or a test fake)."""

    on_exit: Callable[[str], None] | None

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    async def load(
        self,
        model_id: str,
        model_dir: Path,
        *,
        prompt_cache_size: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> Loaded: ...

    def generate(
        self,
        params: SamplingParams,
        *,
        messages: tuple[ChatMessage, ...] | None = None,
        prompt: str | None = None,
        tokens: tuple[int, ...] | None = None,
        partition: str = "",
    ) -> AsyncIterator[Started | Delta | Finished]: ...

    def cancel_all(self, reason: str) -> int: ...

    async def stop(self, timeout: float = 5.0) -> None: ...

    def kill(self) -> None: ...


SpawnWorker = Callable[[], Awaitable[Worker]]


async def spawn_process() -> Worker:
    from engine.worker import WorkerProcess

    return await WorkerProcess.spawn()


@dataclass(frozen=True)
class RegistryConfig:
    load_wait: float = 30.0
    prompt_cache_size: int = 8
    stop_timeout: float = 5.0
    memory_budget: int = 8 * 1024**3
    max_loaded_models: int | None = None
    min_residency: float = 10.0
    keep_alive: float = 600.0
    load_timeout: float = 120.0
    drain_timeout: float = 30.0
    unload_timeout: float = 10.0
    max_concurrent: int = 4
    queue_per_model: int = 32
    queue_total: int = 128
    queue_per_key: int = 0  # queued-plus-running requests per caller and model; 0: no cap
    worker_overhead: int = 256 * 1024**2
    spare_worker: bool = False
    tick: float = 0.25


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


class Lease:
    """The right to run requests on a ready model until released (exactly once)."""

    _ids = itertools.count(1)

    def __init__(self, model_id: str, worker: Worker) -> None:
        self.id = next(Lease._ids)
        self.model_id = model_id
        self.worker = worker
        self.released = False
        self.started = time.monotonic()

    def generate(
        self,
        params: SamplingParams,
        *,
        messages: tuple[ChatMessage, ...] | None = None,
        prompt: str | None = None,
        tokens: tuple[int, ...] | None = None,
        partition: str = "",
    ) -> AsyncIterator[Started | Delta | Finished]:
        return self.worker.generate(
            params, messages=messages, prompt=prompt, tokens=tokens, partition=partition
        )


@dataclass(eq=False)
class _Waiter:
    caller: str
    future: asyncio.Future[Lease]
    enqueued: float
    reason: str = "queued"


@dataclass(eq=False)
class _Slot:
    spec: ModelSpec
    state: ModelState = ModelState.ABSENT
    worker: Worker | None = None
    need: MemoryNeed | None = None
    leases: set[Lease] = field(default_factory=set)
    queue: FairQueue[_Waiter] = field(default_factory=FairQueue)
    ready_since: float | None = None
    last_used: float | None = None
    load_started: float | None = None
    last_progress: float | None = None
    progress_bytes: int = 0
    load_seconds: float | None = None
    state_since: float = 0.0
    memory_bytes: int = 0
    error: str | None = None
    task: asyncio.Task[None] | None = None
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    loads: int = 0
    crashed: bool = False


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
        self._spawn = spawn
        self._clock = clock
        self._events = events or NullEvents()
        self._slots: dict[str, _Slot] = {}
        self._spare: Worker | None = None
        self._spare_task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._last_tick: float | None = None
        self._closed = False

    # --- snapshots -----------------------------------------------------------

    def _slot(self, model_id: str) -> _Slot:
        slot = self._slots.get(model_id)
        if slot is None:
            slot = self._slots[model_id] = _Slot(self._store.specs[model_id])
        return slot

    def status(self, model_id: str) -> ModelStatus:
        slot = self._slot(model_id)
        now = self._clock()
        return ModelStatus(
            id=model_id,
            state=slot.state,
            leases=len(slot.leases),
            queued=len(slot.queue),
            need_bytes=slot.need.total if slot.need else None,
            memory_bytes=slot.memory_bytes,
            load_seconds=slot.load_seconds,
            idle_seconds=None if slot.last_used is None or slot.leases else now - slot.last_used,
            resident_seconds=None if slot.ready_since is None else now - slot.ready_since,
            pinned=slot.spec.pinned,
            error=slot.error,
            loads=slot.loads,
            pid=slot.worker.pid if slot.worker is not None else None,
            crashed=slot.state is ModelState.FAILED and slot.crashed,
            waiting=tuple(WaitingRequest(w.caller, now - w.enqueued, w.reason) for w in slot.queue),
        )

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
            )
        return slot.need

    @property
    def wedged(self) -> bool:
        """True when the watchdog has not run for a long time: states are not being resolved."""
        if self._watchdog is None or self._last_tick is None:
            return False
        return self._clock() - self._last_tick > max(5.0, 20 * self._config.tick)

    @property
    def memory_used(self) -> int:
        return sum(s.need.total for s in self._slots.values() if s.state in HOLDING and s.need)

    # --- leases --------------------------------------------------------------

    def precheck(self, model_id: str) -> None:
        """Raise what ``acquire`` would raise at once: never fits, or queue full."""
        slot = self._slot(model_id)
        self._check_fits(slot)
        self._check_queue(slot)

    async def acquire(
        self,
        model_id: str,
        caller: str = "-",
        wait: float | None = None,
        *,
        may_load: bool = True,
    ) -> Lease:
        """Wait (up to ``wait``, default ``load_wait``) for ``model_id`` and lease it.

        Raises before anything is unloaded when the model can never fit, and
        at once when its queue is full.  The caller must ``release`` the lease.
        """
        if self._closed:
            raise ModelLoadFailed("the gateway is shutting down")
        self._ensure_watchdog()
        slot = self._slot(model_id)
        self._check_fits(slot)
        self._check_queue(slot)
        waiter = _Waiter(caller, asyncio.get_running_loop().create_future(), self._clock())
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
        self._schedule()

    @contextlib.asynccontextmanager
    async def lease(self, model_id: str, caller: str = "-") -> AsyncIterator[Lease]:
        """``acquire`` and ``release`` around a block."""
        lease = await self.acquire(model_id, caller)
        try:
            yield lease
        finally:
            self.release(lease)

    def _check_fits(self, slot: _Slot) -> None:
        try:
            need = self.need(slot.spec.id)
        except MemoryEstimateError as exc:
            raise ModelLoadFailed(f"model {slot.spec.id} cannot be loaded: {exc}") from exc
        pinned = self.pinned_bytes(exclude=slot.spec.id)
        budget = self._config.memory_budget
        if need.total + pinned > budget:
            raise InsufficientMemory(
                f"model {slot.spec.id} needs {format_bytes(need.total)} "
                f"(weights {format_bytes(need.weights)}, KV cache {format_bytes(need.kv_cache)} "
                f"for {need.context_length} tokens, overhead {format_bytes(need.overhead)}); "
                f"the memory budget is {format_bytes(budget)}"
                + (f", of which pinned models hold {format_bytes(pinned)}" if pinned else ""),
                need=need.total,
                budget=budget,
                pinned=pinned,
            )

    def _check_queue(self, slot: _Slot) -> None:
        total = sum(len(s.queue) for s in self._slots.values())
        if len(slot.queue) < self._config.queue_per_model and total < self._config.queue_total:
            return
        which = "the gateway's" if total >= self._config.queue_total else f"{slot.spec.id}'s"
        raise ServerBusy(
            f"{which} request queue is full; retry later",
            retry_after=self._estimated_wait(slot),
        )

    def _estimated_wait(self, slot: _Slot) -> float:
        """Seconds until a new request for ``slot`` could start: the rest of a load,
        plus the queue ahead of it at the model's measured request duration."""
        now = self._clock()
        wait = 0.0
        if slot.state is not ModelState.READY:
            expected = slot.load_seconds or (self.need(slot.spec.id).weights / 200e6 + 3.0)
            started = slot.load_started if slot.state is ModelState.LOADING else now
            wait += max(0.0, expected - (now - (started or now)))
        per_request = sum(slot.durations) / len(slot.durations) if slot.durations else 5.0
        wait += len(slot.queue) * per_request / self._config.max_concurrent
        return max(1.0, wait)

    # --- scheduling ----------------------------------------------------------

    def _schedule(self) -> None:
        """Look at every model with waiting requests and move each forward."""
        if self._closed:
            return
        for slot in list(self._slots.values()):
            if slot.state is ModelState.DRAINING and not slot.leases:
                self._start_unload(slot)
        waiting = [s for s in self._slots.values() if len(s.queue)]
        waiting.sort(key=lambda s: min(w.enqueued for w in s.queue))
        for slot in waiting:
            self._advance(slot)

    def _advance(self, slot: _Slot) -> None:
        if slot.state is ModelState.READY:
            self._admit(slot)
        elif slot.state in (ModelState.ABSENT, ModelState.FAILED):
            self._plan(slot)
        elif slot.state is ModelState.LOADING:
            self._set_reason(slot, f"{slot.spec.id} is loading")
        else:
            self._set_reason(slot, f"{slot.spec.id} is {slot.state.value}; it will load again")

    def _admit(self, slot: _Slot) -> None:
        assert slot.worker is not None
        while len(slot.queue) and len(slot.leases) < self._config.max_concurrent:
            waiter = slot.queue.pop()
            if waiter.future.done():
                continue
            lease = Lease(slot.spec.id, slot.worker)
            slot.leases.add(lease)
            waiter.future.set_result(lease)
        self._events.queue_changed(slot.spec.id, len(slot.queue))
        self._events.in_flight(slot.spec.id, len(slot.leases))
        if len(slot.queue):
            self._set_reason(slot, f"{slot.spec.id} is busy ({len(slot.leases)} running)")

    def _plan(self, slot: _Slot) -> None:
        residents = [
            Resident(
                s.spec.id,
                s.state.value,  # type: ignore[arg-type]
                s.need.total if s.need else 0,
                len(s.leases) + len(s.queue),
                s.spec.pinned,
                s.ready_since,
                s.last_used,
            )
            for s in self._slots.values()
            if s.state in HOLDING
        ]
        max_loaded = self._config.max_loaded_models or None
        plan = plan_load(
            slot.spec.id,
            self.need(slot.spec.id).total,
            residents,
            budget=self._config.memory_budget,
            max_loaded=max_loaded,
            now=self._clock(),
            min_residency=self._config.min_residency,
        )
        if isinstance(plan, Admit):
            self._start_load(slot)
        elif isinstance(plan, Evict):
            self._events.swapped(slot.spec.id)
            for model_id in plan.idle + plan.busy:
                self._events.evicted(model_id, "busy" if model_id in plan.busy else "idle")
                self._drain(self._slots[model_id], reason=f"making room for {slot.spec.id}")
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

    def _set_reason(self, slot: _Slot, reason: str) -> None:
        for waiter in slot.queue:
            waiter.reason = reason

    def _fail_waiters(self, slot: _Slot, error: Exception) -> None:
        while len(slot.queue):
            waiter = slot.queue.pop()
            if not waiter.future.done():
                waiter.future.set_exception(error)
                waiter.future.exception()  # retrieved: the waiter may have timed out already
        self._events.queue_changed(slot.spec.id, 0)

    # --- transitions -----------------------------------------------------------

    def _enter(self, slot: _Slot, state: ModelState) -> None:
        slot.state = state
        slot.state_since = self._clock()
        self._events.state_changed(slot.spec.id, state.value)
        self._events.memory(self.memory_used, self._config.memory_budget)

    def _start_load(self, slot: _Slot) -> None:
        now = self._clock()
        self._enter(slot, ModelState.LOADING)
        slot.error = None
        slot.load_started = slot.last_progress = now
        slot.progress_bytes = 0
        slot.loads += 1
        slot.crashed = False
        self._set_reason(slot, f"{slot.spec.id} is loading")
        slot.task = asyncio.get_running_loop().create_task(self._load(slot))

    async def _load(self, slot: _Slot) -> None:
        model_id = slot.spec.id
        worker: Worker | None = None
        started = self._clock()
        try:
            worker = await self._take_worker()
            worker.on_exit = lambda reason: self._worker_exited(slot, worker, reason)
            slot.worker = worker
            loaded = await worker.load(
                model_id,
                slot.spec.path,
                prompt_cache_size=self._config.prompt_cache_size,
                on_progress=lambda n: self._load_progress(slot, n),
            )
        except asyncio.CancelledError:
            if worker is not None:
                worker.kill()
            raise
        except Exception as exc:
            self._load_failed(slot, f"model {model_id} failed to load: {exc}")
            if worker is not None:
                with contextlib.suppress(Exception):
                    await worker.stop(self._config.unload_timeout)
            return
        if slot.state is not ModelState.LOADING or slot.worker is not worker:
            return  # the load was failed meanwhile (stalled, or the worker died)
        slot.load_seconds = self._clock() - started
        slot.memory_bytes = loaded.memory_bytes
        slot.ready_since = slot.last_used = self._clock()
        self._enter(slot, ModelState.READY)
        self._events.loaded(model_id, "ok", slot.load_seconds, loaded.memory_bytes)
        log.info("loaded %s in %.1fs", model_id, slot.load_seconds)
        self._schedule()

    def _load_progress(self, slot: _Slot, resident: int) -> None:
        if resident > slot.progress_bytes:
            slot.progress_bytes = resident
            slot.last_progress = self._clock()

    def _load_failed(self, slot: _Slot, reason: str) -> None:
        log.error("%s", reason)
        slot.worker = None
        slot.error = reason
        self._enter(slot, ModelState.FAILED)
        self._events.loaded(slot.spec.id, "failed", self._clock() - (slot.load_started or 0), 0)
        self._fail_waiters(slot, ModelLoadFailed(reason))
        self._schedule()

    def _drain(self, slot: _Slot, reason: str) -> None:
        """Stop admitting to ``slot``; unload it once its leases end."""
        if slot.state is not ModelState.READY:
            return
        log.info("draining %s (%s, %d in flight)", slot.spec.id, reason, len(slot.leases))
        self._enter(slot, ModelState.DRAINING)
        if not slot.leases:
            self._start_unload(slot)

    def _start_unload(self, slot: _Slot) -> None:
        if slot.state is ModelState.UNLOADING:
            return
        self._events.drained(slot.spec.id, self._clock() - slot.state_since)
        self._enter(slot, ModelState.UNLOADING)
        slot.task = asyncio.get_running_loop().create_task(self._unload(slot))

    async def _unload(self, slot: _Slot) -> None:
        worker = slot.worker
        if worker is not None:
            worker.on_exit = None
            await worker.stop(self._config.unload_timeout)
        slot.worker = None
        slot.ready_since = None
        slot.memory_bytes = 0
        self._enter(slot, ModelState.ABSENT)
        self._events.unloaded(slot.spec.id)
        log.info("unloaded %s", slot.spec.id)
        self._schedule()

    def _worker_exited(self, slot: _Slot, worker: Worker | None, reason: str) -> None:
        if slot.worker is not worker or self._closed:
            return
        self._events.worker_crashed(slot.spec.id)
        if slot.state is ModelState.LOADING:
            self._load_failed(slot, f"model {slot.spec.id}: worker exited while loading ({reason})")
            return
        log.error("worker of %s exited unexpectedly: %s", slot.spec.id, reason)
        slot.worker = None
        slot.error = f"worker exited ({reason})"
        slot.crashed = True
        slot.ready_since = None
        slot.memory_bytes = 0
        self._enter(slot, ModelState.FAILED)
        self._schedule()

    # --- workers -----------------------------------------------------------------

    async def _take_worker(self) -> Worker:
        """The warm spare if there is one (then start the next spare), else a new worker."""
        spare, self._spare = self._spare, None
        if self._config.spare_worker:
            self._start_spare()
        if spare is not None and spare.alive:
            return spare
        return await self._spawn()

    def _start_spare(self) -> None:
        if self._closed or (self._spare_task is not None and not self._spare_task.done()):
            return

        async def make() -> None:
            worker = await self._spawn()
            if self._closed:
                await worker.stop(self._config.stop_timeout)
            else:
                self._spare = worker

        self._spare_task = asyncio.get_running_loop().create_task(make())

    async def start(self) -> None:
        """Start the watchdog (and the spare worker when configured)."""
        self._ensure_watchdog()
        if self._config.spare_worker:
            self._start_spare()

    # --- administration ----------------------------------------------------------

    def request_load(self, model_id: str) -> None:
        """Load ``model_id`` as if a request had come for it (the admin's load)."""
        self._ensure_watchdog()
        slot = self._slot(model_id)
        self._check_fits(slot)
        if slot.state is ModelState.READY:
            return
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        future.add_done_callback(
            lambda f: None if f.cancelled() or f.exception() else self.release(f.result())
        )
        slot.queue.push("admin", _Waiter("admin", future, self._clock()))
        self._schedule()

    def request_unload(self, model_id: str) -> None:
        """Drain ``model_id`` and unload it (its in-flight requests finish first);
        a load in progress is cancelled."""
        slot = self._slot(model_id)
        if slot.state is ModelState.READY:
            self._drain(slot, reason="unload requested")
        elif slot.state is ModelState.LOADING:
            worker = slot.worker
            if slot.task is not None:
                slot.task.cancel()
            self._load_failed(slot, f"the load of {model_id} was cancelled by an operator")
            if worker is not None:
                worker.kill()

    # --- deadlines -----------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        """Start the deadline watchdog (``tick = 0`` leaves it to the caller: tests)."""
        if self._watchdog is None and not self._closed and self._config.tick > 0:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while not self._closed:
            self._last_tick = self._clock()
            try:
                self.check_deadlines()
            except Exception:
                log.exception("registry watchdog failed")
            await asyncio.sleep(self._config.tick)

    def check_deadlines(self) -> None:
        """Resolve every state past its deadline; unload idle models past keep_alive."""
        now = self._clock()
        config = self._config
        for slot in list(self._slots.values()):
            since = now - slot.state_since
            if slot.state is ModelState.LOADING and now - (slot.last_progress or now) > (
                config.load_timeout
            ):
                self._events.deadline_missed(slot.spec.id, "load")
                worker = slot.worker
                self._load_failed(
                    slot, f"model {slot.spec.id}: load made no progress for {config.load_timeout}s"
                )
                if worker is not None:
                    worker.kill()
            elif slot.state is ModelState.DRAINING and since > config.drain_timeout:
                self._events.deadline_missed(slot.spec.id, "drain")
                if slot.worker is not None:
                    cancelled = slot.worker.cancel_all(
                        f"model {slot.spec.id} was unloaded: the drain timeout "
                        f"({config.drain_timeout}s) ended this request"
                    )
                    self._events.drain_cancelled(slot.spec.id, cancelled)
                for lease in list(slot.leases):
                    lease.released = True
                slot.leases.clear()
                self._start_unload(slot)
            elif slot.state is ModelState.UNLOADING and since > config.unload_timeout + 1:
                self._events.deadline_missed(slot.spec.id, "unload")
                if slot.worker is not None:
                    slot.worker.kill()
            elif slot.state is ModelState.READY and self._idle_expired(slot, now):
                self._drain(slot, reason="keep_alive expired")
        self._schedule()

    def _idle_expired(self, slot: _Slot, now: float) -> bool:
        keep_alive = slot.spec.keep_alive
        if keep_alive is None:
            keep_alive = self._config.keep_alive
        if slot.spec.pinned or keep_alive < 0 or slot.leases or len(slot.queue):
            return False
        return now - (slot.last_used or now) >= keep_alive

    async def close(self) -> None:
        """Stop every worker (at gateway shutdown)."""
        self._closed = True
        for task in (self._watchdog, self._spare_task):
            if task is not None:
                task.cancel()
        for slot in self._slots.values():
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()
            self._fail_waiters(slot, ModelLoadFailed("the gateway is shutting down"))
        workers = [s.worker for s in self._slots.values() if s.worker is not None]
        if self._spare is not None:
            workers.append(self._spare)
        await asyncio.gather(
            *(w.stop(self._config.stop_timeout) for w in workers), return_exceptions=True
        )
