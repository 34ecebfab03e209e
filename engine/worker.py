"""The gateway's side of one worker process.

``WorkerProcess`` spawns ``python -m engine.worker_main``, sends it frames over
its stdin and reads frames from its stdout in one reader task that routes each
event to the queue of the request it belongs to.  When the process dies every
request still in flight gets ``WorkerCrashed``; the gateway itself is unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from engine.errors import GenerationFailed, ModelLoadFailed, RequestCancelled, WorkerCrashed
from engine.protocol import (
    HEADER,
    PLAIN_OUTPUT,
    Cancel,
    ChatMessage,
    Decoding,
    Delta,
    Failed,
    Finished,
    FromWorker,
    Generate,
    Load,
    Loaded,
    LoadFailed,
    LoadProgress,
    OutputSpec,
    SamplingParams,
    Shutdown,
    Started,
    ToWorker,
    WorkerStats,
    frame,
    frame_length,
    from_worker_decoder,
)

log = logging.getLogger("engine.worker")

_ids = itertools.count(1)
_CRASHED = object()


class _Cancelled:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class WorkerProcess:
    """One worker process and the requests in flight on it."""

    def __init__(
        self, proc: asyncio.subprocess.Process, on_exit: Callable[[str], None] | None = None
    ) -> None:
        self._proc = proc
        self.on_exit = on_exit
        self._on_progress: Callable[[int], None] | None = None
        self._pending_load: asyncio.Future[Loaded] | None = None
        self._streams: dict[int, asyncio.Queue[object]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.exit_reason: str | None = None
        self.stats: WorkerStats | None = None
        self.on_stats: Callable[[], None] | None = None  # called when ``stats`` changes

    @classmethod
    async def spawn(
        cls,
        *,
        on_exit: Callable[[str], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """Start a worker process; ``on_exit`` is called with the reason when it ends."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine.worker_main",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        return cls(proc, on_exit)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self.exit_reason is None

    @property
    def in_flight(self) -> int:
        return len(self._streams)

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
        """Load a model; ``on_progress`` gets the worker's resident bytes about once a second."""
        loop = asyncio.get_running_loop()
        self._on_progress = on_progress
        self._pending_load = loop.create_future()
        await self._send(
            Load(model_id, str(model_dir), prompt_cache_size, decoding, kv_budget_tokens)
        )
        return await self._pending_load

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
        """Run one generation; leaving the iteration early cancels it in the worker."""
        req_id = next(_ids)
        events: asyncio.Queue[object] = asyncio.Queue()
        self._streams[req_id] = events
        finished = False
        try:
            await self._send(
                Generate(
                    req_id,
                    params,
                    messages=messages,
                    prompt=prompt,
                    tokens=tokens,
                    partition=partition,
                    output=output,
                    caller=caller,
                )
            )
            while True:
                event = await events.get()
                if event is _CRASHED:
                    raise WorkerCrashed(f"the model worker stopped: {self.exit_reason}")
                if isinstance(event, _Cancelled):
                    raise RequestCancelled(event.reason)
                if isinstance(event, Failed):
                    finished = True
                    raise GenerationFailed(event.code, event.message)
                assert isinstance(event, Started | Delta | Finished)
                if isinstance(event, Finished):
                    finished = True
                yield event
                if finished:
                    return
        finally:
            self._streams.pop(req_id, None)
            if not finished:
                # No await here: this runs inside a cancelled task on client disconnect.
                self._send_nowait(Cancel(req_id))

    def cancel_all(self, reason: str) -> int:
        """End every request in flight with ``RequestCancelled``; returns how many."""
        for events in self._streams.values():
            events.put_nowait(_Cancelled(reason))
        return len(self._streams)

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout``."""
        if self._proc.returncode is None:
            with contextlib.suppress(ConnectionError, WorkerCrashed):
                await self._send(Shutdown())
            try:
                await asyncio.wait_for(self._proc.wait(), timeout)
            except TimeoutError:
                self.kill()
                await self._proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    def kill(self) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def _send_nowait(self, message: ToWorker) -> None:
        stdin = self._proc.stdin
        if stdin is not None and self.alive and not stdin.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                stdin.write(frame(message))

    async def _send(self, message: ToWorker) -> None:
        stdin = self._proc.stdin
        if stdin is None or not self.alive:
            raise WorkerCrashed(f"the model worker stopped: {self.exit_reason}")
        try:
            stdin.write(frame(message))
            await stdin.drain()
        except (ConnectionError, BrokenPipeError) as exc:
            raise WorkerCrashed(f"the model worker stopped: {exc}") from exc

    async def _read(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            while True:
                header = await stdout.readexactly(HEADER.size)
                body = await stdout.readexactly(frame_length(header))
                self._dispatch(from_worker_decoder.decode(body))
        except asyncio.IncompleteReadError:
            pass
        except Exception:
            log.exception("worker %d sent a bad frame", self.pid)
            self.kill()
        code = await self._proc.wait()
        self.exit_reason = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        if self._pending_load is not None and not self._pending_load.done():
            self._pending_load.set_exception(
                ModelLoadFailed(f"the worker exited while loading ({self.exit_reason})")
            )
        for events in self._streams.values():
            events.put_nowait(_CRASHED)
        if self.on_exit is not None:
            self.on_exit(self.exit_reason)

    def _dispatch(self, message: FromWorker) -> None:
        if isinstance(message, LoadProgress):
            if self._on_progress is not None:
                self._on_progress(message.resident_bytes)
            return
        if isinstance(message, WorkerStats):
            self.stats = message
            if self.on_stats is not None:
                self.on_stats()
            return
        if isinstance(message, Loaded | LoadFailed):
            future = self._pending_load
            if future is not None and not future.done():
                if isinstance(message, Loaded):
                    future.set_result(message)
                else:
                    future.set_exception(ModelLoadFailed(message.message))
            return
        events = self._streams.get(message.req_id)
        if events is not None:
            events.put_nowait(message)
