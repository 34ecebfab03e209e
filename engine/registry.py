"""The engine registry: the one owner of model states, workers and leases.

States of a model: ``absent -> loading -> ready``, ``failed`` (with the reason)
when a load fails or its worker dies; the next request retries the load.
Concurrent requests for a model that is not ready share one load: the decision
to load is made here, in one synchronous step of the event loop, never on a
state the caller read earlier.  A lease is held for a whole response and
released in ``finally``.  See ``engine/DESIGN.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from engine.errors import ModelLoadFailed, ModelNotReady
from engine.protocol import ChatMessage, Delta, Finished, Loaded, SamplingParams, Started
from engine.store import ModelSpec, ModelStore
from engine.worker import WorkerProcess

log = logging.getLogger("engine.registry")


class ModelState(StrEnum):
    ABSENT = "absent"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class Worker(Protocol):
    """What the registry needs of a worker (``WorkerProcess`` or a test fake)."""

    @property
    def alive(self) -> bool: ...

    async def load(self, model_id: str, model_dir, *, prompt_cache_size: int) -> Loaded: ...

    def generate(
        self,
        params: SamplingParams,
        *,
        messages: tuple[ChatMessage, ...] | None = None,
        prompt: str | None = None,
    ) -> AsyncIterator[Started | Delta | Finished]: ...

    async def stop(self, timeout: float = 5.0) -> None: ...


SpawnWorker = Callable[[Callable[[str], None]], Awaitable[Worker]]


async def spawn_process(on_exit: Callable[[str], None]) -> Worker:
    return await WorkerProcess.spawn(on_exit=on_exit)


@dataclass(frozen=True)
class RegistryConfig:
    load_wait: float = 30.0
    prompt_cache_size: int = 8
    stop_timeout: float = 5.0


@dataclass(frozen=True)
class ModelStatus:
    """A snapshot of one model for the HTTP layer (never a live object)."""

    id: str
    state: ModelState
    leases: int
    memory_bytes: int
    load_seconds: float | None
    last_used: float | None
    error: str | None


@dataclass
class _Slot:
    spec: ModelSpec
    state: ModelState = ModelState.ABSENT
    worker: Worker | None = None
    load_task: asyncio.Task[Worker] | None = None
    load_started: float | None = None
    load_seconds: float | None = None
    leases: int = 0
    memory_bytes: int = 0
    last_used: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Lease:
    """The right to run requests on a ready model until the lease is released."""

    model_id: str
    worker: Worker

    def generate(
        self,
        params: SamplingParams,
        *,
        messages: tuple[ChatMessage, ...] | None = None,
        prompt: str | None = None,
    ) -> AsyncIterator[Started | Delta | Finished]:
        return self.worker.generate(params, messages=messages, prompt=prompt)


class Registry:
    def __init__(
        self,
        store: ModelStore,
        config: RegistryConfig,
        spawn: SpawnWorker = spawn_process,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._config = config
        self._spawn = spawn
        self._clock = clock
        self._slots: dict[str, _Slot] = {}
        self._closed = False

    def _slot(self, model_id: str) -> _Slot:
        slot = self._slots.get(model_id)
        if slot is None:
            spec = self._store.specs[model_id]
            slot = self._slots[model_id] = _Slot(spec)
        return slot

    def status(self, model_id: str) -> ModelStatus:
        slot = self._slot(model_id)
        return ModelStatus(
            id=model_id,
            state=slot.state,
            leases=slot.leases,
            memory_bytes=slot.memory_bytes,
            load_seconds=slot.load_seconds,
            last_used=slot.last_used,
            error=slot.error,
        )

    def start_load(self, model_id: str) -> asyncio.Task[Worker]:
        """Begin loading ``model_id`` unless it is ready or already loading (one load)."""
        if self._closed:
            raise ModelLoadFailed("the gateway is shutting down")
        slot = self._slot(model_id)
        if slot.state is ModelState.READY and slot.worker is not None and slot.worker.alive:
            done: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
            done.set_result(slot.worker)
            return done  # type: ignore[return-value]
        if slot.load_task is None or slot.load_task.done():
            slot.state = ModelState.LOADING
            slot.error = None
            slot.load_started = self._clock()
            slot.load_task = asyncio.get_running_loop().create_task(self._load(slot))
            slot.load_task.add_done_callback(_retrieve_exception)
        return slot.load_task

    async def _load(self, slot: _Slot) -> Worker:
        model_id = slot.spec.id
        worker: Worker | None = None
        try:
            worker = await self._spawn(lambda reason: self._worker_exited(model_id, reason))
            loaded = await worker.load(
                model_id, slot.spec.path, prompt_cache_size=self._config.prompt_cache_size
            )
        except Exception as exc:
            slot.state, slot.error, slot.worker = ModelState.FAILED, str(exc), None
            log.error("load of %s failed: %s", model_id, exc)
            if worker is not None:
                await worker.stop(self._config.stop_timeout)
            raise ModelLoadFailed(f"model {model_id} failed to load: {exc}") from exc
        slot.worker, slot.state = worker, ModelState.READY
        slot.memory_bytes = loaded.memory_bytes
        slot.load_seconds = loaded.load_seconds
        log.info("loaded %s in %.1fs", model_id, loaded.load_seconds)
        return worker

    def _worker_exited(self, model_id: str, reason: str) -> None:
        slot = self._slots.get(model_id)
        if slot is None or slot.state is not ModelState.READY or slot.worker is None:
            return
        if slot.worker.alive:  # an older worker of this model ended; not the current one
            return
        slot.state, slot.worker = ModelState.FAILED, None
        slot.error = f"worker exited ({reason})"
        if not self._closed:
            log.error("worker of %s exited unexpectedly: %s", model_id, reason)

    async def acquire(self, model_id: str) -> Lease:
        """Wait (up to ``load_wait``) for a ready ``model_id`` and lease it.

        The caller must ``release`` the lease exactly once, in ``finally``.
        """
        slot = self._slot(model_id)
        task = self.start_load(model_id)
        try:
            worker = await asyncio.wait_for(asyncio.shield(task), self._config.load_wait)
        except TimeoutError:
            raise ModelNotReady(
                f"model {model_id} is still loading; retry shortly",
                retry_after=self._estimated_remaining(slot),
            ) from None
        slot.leases += 1
        return Lease(model_id, worker)

    def release(self, lease: Lease) -> None:
        slot = self._slot(lease.model_id)
        slot.leases -= 1
        slot.last_used = self._clock()

    @contextlib.asynccontextmanager
    async def lease(self, model_id: str) -> AsyncIterator[Lease]:
        """``acquire`` and ``release`` around a block."""
        lease = await self.acquire(model_id)
        try:
            yield lease
        finally:
            self.release(lease)

    def _estimated_remaining(self, slot: _Slot) -> float:
        elapsed = self._clock() - (slot.load_started or self._clock())
        expected = slot.load_seconds or self._config.load_wait
        return max(1.0, expected - elapsed)

    async def close(self) -> None:
        """Stop every worker (at gateway shutdown)."""
        self._closed = True
        for slot in self._slots.values():
            if slot.load_task is not None and not slot.load_task.done():
                slot.load_task.cancel()
        workers = [s.worker for s in self._slots.values() if s.worker is not None]
        await asyncio.gather(
            *(w.stop(self._config.stop_timeout) for w in workers), return_exceptions=True
        )


def _retrieve_exception(task: asyncio.Task[Worker]) -> None:
    if not task.cancelled():
        task.exception()
