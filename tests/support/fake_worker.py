"""A scripted stand-in for a worker process, for the registry's unit tests.

It can be told to block its load until released, to fail its load, to emit
tokens only when the test lets it (``token_gate``), or to die as a killed
process would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from engine.errors import ModelLoadFailed, RequestCancelled, WorkerCrashed
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


class FakeWorker:
    def __init__(self, factory: FakeWorkers) -> None:
        self._factory = factory
        self.on_exit: Callable[[str], None] | None = None
        self.alive = True
        self.loaded: str | None = None
        self.stopped = False
        self.killed = False
        self._cancel: str | None = None
        self.in_flight = 0
        self.pid: int | None = None
        self.stats: WorkerStats | None = None
        self.on_stats: Callable[[], None] | None = None

    async def load(
        self,
        model_id: str,
        model_dir: Path,
        *,
        prompt_cache_size: int,
        on_progress: Callable[[int], None] | None = None,
        decoding: Decoding = "auto",
        kv_budget_tokens: int = 0,
    ) -> Loaded:
        self._factory.loads.append(model_id)
        self.load_options = {"decoding": decoding, "kv_budget_tokens": kv_budget_tokens}
        await self._factory.load_gate.wait()
        if not self.alive:
            raise ModelLoadFailed("the worker exited while loading")
        if model_id in self._factory.fail_loads:
            raise ModelLoadFailed(f"corrupt weights in {model_id}")
        self.loaded = model_id
        return Loaded(model_id, 0.01, 1000, 2048, self._factory.decoding)

    async def generate(
        self,
        params: SamplingParams,
        *,
        messages: tuple[ChatMessage, ...] | None = None,
        prompt: str | None = None,
        tokens: tuple[int, ...] | None = None,
        partition: str = "",
        output: OutputSpec = PLAIN_OUTPUT,
        caller: str = "",
    ) -> AsyncIterator[Started | Delta | Finished]:
        self.in_flight += 1
        try:
            yield Started(1, 3, 0)
            for i, token in enumerate(self._factory.tokens[: params.max_tokens]):
                await self._factory.token_gate.wait()
                await asyncio.sleep(0)
                if self._cancel is not None:
                    raise RequestCancelled(self._cancel)
                if not self.alive:
                    raise WorkerCrashed("the model worker stopped: killed")
                yield Delta(1, token, i + 1)
            count = min(len(self._factory.tokens), params.max_tokens)
            yield Finished(1, "length" if count == params.max_tokens else "stop", 3, count)
        finally:
            self.in_flight -= 1

    def cancel_all(self, reason: str) -> int:
        self._cancel = reason
        return self.in_flight

    async def stop(self, timeout: float = 5.0) -> None:
        self.stopped = True
        self._exit("stopped")

    def kill(self) -> None:
        self.killed = True
        self._exit("killed by signal 9")

    def die(self, reason: str = "killed by signal 9") -> None:
        self._exit(reason)

    def _exit(self, reason: str) -> None:
        if self.alive:
            self.alive = False
            if self.on_exit is not None:
                self.on_exit(reason)


class FakeWorkers:
    """The spawn function the registry is given, and what it has spawned."""

    def __init__(self, tokens: list[str] | None = None) -> None:
        self.tokens = tokens or ["Hello", ",", " world"]
        self.spawned: list[FakeWorker] = []
        self.loads: list[str] = []
        self.fail_loads: set[str] = set()
        self.decoding = "interleaved"  # what the fake workers' Loaded reports
        self.load_gate = asyncio.Event()
        self.load_gate.set()
        self.token_gate = asyncio.Event()
        self.token_gate.set()

    async def __call__(self) -> FakeWorker:
        worker = FakeWorker(self)
        self.spawned.append(worker)
        return worker
