"""The seam between the registry and worker processes.

``Worker`` is all the registry needs of one (``engine.worker.WorkerProcess``, or
``tests.support.fake_worker.FakeWorker`` in unit tests); ``SpawnWorker`` makes
one.  ``WorkerSource`` is where the registry takes the worker of a new load
from: the warm spare when ``engine.spare_worker`` keeps one, else a new spawn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

from engine.protocol import (
    PLAIN_OUTPUT,
    ChatMessage,
    Decoding,
    Delta,
    Finished,
    Loaded,
    OutputSpec,
    SamplingParams,
    Started,
    WorkerStats,
)


class Worker(Protocol):
    """What the registry needs of a worker (``WorkerProcess`` or a test fake)."""

    on_exit: Callable[[str], None] | None
    on_stats: Callable[[], None] | None

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def stats(self) -> WorkerStats | None:
        """The latest report of how the loaded model is serving (None before any)."""
        ...

    async def load(
        self,
        model_id: str,
        model_dir: Path,
        *,
        prompt_cache_size: int,
        on_progress: Callable[[int], None] | None = None,
        decoding: Decoding = "auto",
        kv_budget_tokens: int = 0,
    ) -> Loaded: ...

    def generate(
        self,
        params: SamplingParams,
        *,
        messages: tuple[ChatMessage, ...] | None = None,
        prompt: str | None = None,
        tokens: tuple[int, ...] | None = None,
        partition: str = "",
        output: OutputSpec = PLAIN_OUTPUT,
        caller: str = "",
    ) -> AsyncIterator[Started | Delta | Finished]: ...

    def cancel_all(self, reason: str) -> int: ...

    async def stop(self, timeout: float = 5.0) -> None: ...

    def kill(self) -> None: ...


SpawnWorker = Callable[[], Awaitable[Worker]]


async def spawn_process() -> Worker:
    from engine.worker import WorkerProcess

    return await WorkerProcess.spawn()


class WorkerSource:
    """Hands out workers for loads, keeping one warm spare when ``spare`` is set."""

    def __init__(self, spawn: SpawnWorker, *, spare: bool, stop_timeout: float) -> None:
        self._spawn = spawn
        self._keep_spare = spare
        self._stop_timeout = stop_timeout
        self._spare: Worker | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def take(self) -> Worker:
        """The warm spare if there is one (then start the next spare), else a new worker."""
        spare, self._spare = self._spare, None
        if self._keep_spare:
            self.warm()
        if spare is not None and spare.alive:
            return spare
        return await self._spawn()

    def warm(self) -> None:
        """Start a spare worker in the background, unless one is being started."""
        if self._closed or (self._task is not None and not self._task.done()):
            return

        async def make() -> None:
            worker = await self._spawn()
            if self._closed:
                await worker.stop(self._stop_timeout)
            else:
                self._spare = worker

        self._task = asyncio.get_running_loop().create_task(make())

    def close(self) -> Worker | None:
        """Stop making spares; returns the spare held now (for the caller to stop)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        spare, self._spare = self._spare, None
        return spare
