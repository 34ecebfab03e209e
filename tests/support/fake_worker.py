"""A scripted stand-in for a worker process, for the registry's unit tests.

It can be told to block its load until released, to fail its load, to emit a
fixed list of tokens, or to die (as a killed process would).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from engine.errors import ModelLoadFailed, WorkerCrashed
from engine.protocol import ChatMessage, Delta, Finished, Loaded, SamplingParams, Started


class FakeWorker:
    def __init__(self, factory: FakeWorkers, on_exit: Callable[[str], None]) -> None:
        self._factory = factory
        self._on_exit = on_exit
        self.alive = True
        self.loaded: str | None = None
        self.stopped = False

    async def load(self, model_id: str, model_dir: Path, *, prompt_cache_size: int) -> Loaded:
        self._factory.loads.append(model_id)
        await self._factory.load_gate.wait()
        if model_id in self._factory.fail_loads:
            raise ModelLoadFailed(f"corrupt weights in {model_id}")
        self.loaded = model_id
        return Loaded(model_id, 0.01, 1000, 2048)

    async def generate(
        self,
        params: SamplingParams,
        *,
        messages: tuple[ChatMessage, ...] | None = None,
        prompt: str | None = None,
    ) -> AsyncIterator[Started | Delta | Finished]:
        yield Started(1, 3, 0)
        for i, token in enumerate(self._factory.tokens[: params.max_tokens]):
            await asyncio.sleep(0)
            if not self.alive:
                raise WorkerCrashed("the model worker stopped: killed")
            yield Delta(1, token, i + 1)
        count = min(len(self._factory.tokens), params.max_tokens)
        yield Finished(1, "length" if count == params.max_tokens else "stop", 3, count)

    async def stop(self, timeout: float = 5.0) -> None:
        self.stopped = True
        self.die("stopped")

    def die(self, reason: str = "killed by signal 9") -> None:
        if self.alive:
            self.alive = False
            self._on_exit(reason)


class FakeWorkers:
    """The spawn function the registry is given, and what it has spawned."""

    def __init__(self, tokens: list[str] | None = None) -> None:
        self.tokens = tokens or ["Hello", ",", " world"]
        self.spawned: list[FakeWorker] = []
        self.loads: list[str] = []
        self.fail_loads: set[str] = set()
        self.load_gate = asyncio.Event()
        self.load_gate.set()

    async def __call__(self, on_exit: Callable[[str], None]) -> FakeWorker:
        worker = FakeWorker(self, on_exit)
        self.spawned.append(worker)
        return worker
