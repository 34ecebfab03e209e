"""Run one inference call on a leased model: ``n`` choices, their events merged.

``open_session`` acquires the lease, starts every choice and waits until the
worker has accepted each prompt, so a refusal (context too long, bad token id)
is raised before any response byte is sent.  The session then yields text and
ends of choices in the order the worker produces them.  ``close`` is
synchronous and idempotent: it cancels what still runs (the worker stops
within one decode step) and the lease is released when the last choice ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from engine.errors import EngineError, GenerationFailed
from engine.protocol import (
    PLAIN_OUTPUT,
    CallDelta,
    ChatMessage,
    Delta,
    Finished,
    OutputSpec,
    SamplingParams,
    Started,
    TokenLogprob,
)
from engine.registry import Lease, Registry

log = logging.getLogger("gateway.inference")


class RequestTimedOut(EngineError):
    """The request passed its deadline (``engine.request_timeout``) while waiting."""


@dataclass(frozen=True)
class InferenceCall:
    """One admitted call.  ``tokens`` is the prompt tokenized by the gateway;
    ``partition`` the prompt-cache partition of the caller; ``may_load`` whether
    the caller's key may cause the model to be loaded (``load`` scope)."""

    model_id: str
    params: SamplingParams
    n: int = 1
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    tokens: tuple[int, ...] | None = None
    partition: str = ""
    may_load: bool = True
    output: OutputSpec = PLAIN_OUTPUT
    keep_alive: float | None = None  # the model's residency after this call (None: as is)

    @property
    def kv_row(self) -> int:
        """The KV cache each choice reserves: its prompt plus its ``max_tokens`` (the
        prompt counted when the gateway tokenized it; the worker counts exactly)."""
        return len(self.tokens or ()) + self.params.max_tokens


@dataclass(frozen=True)
class TextOut:
    """New output of one choice: answer text, reasoning, tool-call pieces, logprobs."""

    index: int
    text: str
    reasoning: str = ""
    calls: tuple[CallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ChoiceEnd:
    index: int
    finish_reason: str
    completion_tokens: int
    stop_sequence: str | None = None
    reasoning_tokens: int = 0
    tool_error: str | None = None


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class InferenceSession:
    def __init__(self, registry: Registry, lease: Lease, call: InferenceCall) -> None:
        self._registry = registry
        self._lease = lease
        self._call = call
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._backlog: deque[object] = deque()
        self._open = call.n
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self._generated = [0] * call.n  # per choice, as the worker reports them
        self.reasoning_tokens = 0
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run_choice(i)) for i in range(call.n)]
        for task in self._tasks:
            task.add_done_callback(self._choice_done)

    async def _run_choice(self, index: int) -> None:
        call = self._call
        try:
            async for event in self._lease.generate(
                call.params,
                messages=call.messages,
                prompt=call.prompt,
                tokens=call.tokens,
                partition=call.partition,
                output=call.output,
            ):
                if isinstance(event, Started):
                    self._queue.put_nowait(event)
                elif isinstance(event, Delta):
                    self._generated[index] = event.completion_tokens
                    self._queue.put_nowait(
                        TextOut(index, event.text, event.reasoning, event.calls, event.logprobs)
                    )
                elif isinstance(event, Finished):
                    self._generated[index] = event.completion_tokens
                    self.reasoning_tokens += event.reasoning_tokens
                    if event.text or event.reasoning or event.calls or event.logprobs:
                        self._queue.put_nowait(
                            TextOut(index, event.text, event.reasoning, event.calls, event.logprobs)
                        )
                    self._queue.put_nowait(
                        ChoiceEnd(
                            index,
                            event.finish_reason,
                            event.completion_tokens,
                            event.stop_sequence,
                            event.reasoning_tokens,
                            event.tool_error,
                        )
                    )
        except EngineError as exc:
            self._queue.put_nowait(_Failure(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any bug on the way to or from the worker ends the request
            log.exception("request on %s failed", call.model_id)
            failure = GenerationFailed("internal", f"{type(exc).__name__} on the way to the model")
            self._queue.put_nowait(_Failure(failure))

    def _choice_done(self, task: asyncio.Task[None]) -> None:
        self._open -= 1
        if self._open == 0:
            self._registry.release(self._lease)

    async def _wait_started(self, deadline: float | None) -> None:
        started = 0
        while started < self._call.n:
            event = await self._next(deadline)
            if isinstance(event, _Failure):
                raise event.error
            if isinstance(event, Started):
                started += 1
                self.prompt_tokens = event.prompt_tokens
                self.cached_tokens = event.cached_tokens
            else:
                self._backlog.append(event)

    async def _next(self, deadline: float | None) -> object:
        if self._backlog:
            return self._backlog.popleft()
        if deadline is None:
            return await self._queue.get()
        timeout = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self._queue.get(), max(0.0, timeout))
        except TimeoutError:
            raise RequestTimedOut("the request took longer than the gateway allows") from None

    async def events(self, deadline: float | None = None) -> AsyncIterator[TextOut | ChoiceEnd]:
        """Text and choice ends until every choice has ended; engine errors are raised,
        and ``RequestTimedOut`` once the loop time passes ``deadline``."""
        remaining = self._call.n
        while remaining:
            event = await self._next(deadline)
            if isinstance(event, _Failure):
                raise event.error
            if isinstance(event, ChoiceEnd):
                remaining -= 1
            assert isinstance(event, TextOut | ChoiceEnd)
            yield event

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far (all of them once every choice has ended)."""
        return sum(self._generated)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


async def open_session(
    registry: Registry,
    call: InferenceCall,
    *,
    caller: str = "-",
    wait: float | None = None,
    deadline: float | None = None,
) -> InferenceSession:
    """Lease the model and start the call; raises ``EngineError`` before any output.

    ``caller`` is the opaque tag the registry's fair queue uses; ``wait`` bounds
    the wait for the model (default: the registry's ``load_wait``).
    """
    lease = await registry.acquire(
        call.model_id,
        caller,
        wait,
        may_load=call.may_load,
        kv_row=call.kv_row,
        kv_choices=call.n,
        keep_alive=call.keep_alive,
    )
    try:
        session = InferenceSession(registry, lease, call)
    except BaseException:
        registry.release(lease)
        raise
    try:
        await session._wait_started(deadline)
    except BaseException:
        session.close()
        raise
    return session
