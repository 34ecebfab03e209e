"""Running an admitted inference call, for any wire format (OpenAI, Anthropic, Ollama).

``complete`` runs a call to the end and returns texts, finish reasons and
counts.  ``stream`` returns a streaming response whose frames a ``Renderer``
of the wire format produces.  Both charge the real token counts to the
admission and commit the usage row before the last byte, and release the
key's concurrency slot on every exit path: completion, engine error, a
client that disconnects, a drain that cancels.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from litestar.response import Stream

from engine.errors import EngineError
from engine.protocol import TokenLogprob, ToolCall
from gateway.admission import Admission
from gateway.context import AppContext
from gateway.errors import GatewayError
from gateway.http_errors import from_engine
from gateway.inference import ChoiceEnd, InferenceSession, TextOut, open_session
from gateway.pipeline import Admitted

KEEPALIVE_SECONDS = 5.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class Counts:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int = 0


@dataclass
class Choice:
    """One choice's whole output, assembled from its pieces."""

    text: str = ""
    reasoning: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str = "stop"
    stop_sequence: str | None = None
    tool_error: str | None = None
    reasoning_tokens: int = 0

    def add(self, item: TextOut) -> None:
        self.text += item.text
        self.reasoning += item.reasoning
        self.logprobs.extend(item.logprobs)
        for piece in item.calls:
            if piece.name is not None:
                self.calls.append(ToolCall(piece.id or "", piece.name, piece.arguments))
            elif self.calls:
                last = self.calls[-1]
                self.calls[-1] = ToolCall(last.id, last.name, last.arguments + piece.arguments)

    def end(self, item: ChoiceEnd) -> None:
        self.finish_reason = item.finish_reason
        self.stop_sequence = item.stop_sequence
        self.tool_error = item.tool_error
        self.reasoning_tokens = item.reasoning_tokens
        if item.tool_error is not None:
            self.calls = []  # a call that did not parse is reported, never half-sent


@dataclass(frozen=True)
class Completed:
    choices: list[Choice]
    counts: Counts
    opened: float = 0.0  # monotonic: when the model began on it (after any wait or load)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.choices]

    @property
    def finish_reasons(self) -> list[str]:
        return [c.finish_reason for c in self.choices]

    @property
    def stop_sequences(self) -> list[str | None]:
        return [c.stop_sequence for c in self.choices]


class Renderer(Protocol):
    """The frames of one wire format's stream."""

    def opening(self, counts: Counts) -> list[bytes]: ...

    def output(self, item: TextOut) -> list[bytes]: ...

    def choice_end(self, end: ChoiceEnd, counts: Counts) -> list[bytes]: ...

    def closing(self, counts: Counts) -> list[bytes]: ...

    def error(self, error: GatewayError) -> bytes: ...

    def keepalive(self) -> bytes: ...


def counts_of(session: InferenceSession) -> Counts:
    return Counts(
        session.prompt_tokens,
        session.completion_tokens,
        session.cached_tokens,
        session.reasoning_tokens,
    )


async def start(ctx: AppContext, admitted: Admitted) -> InferenceSession:
    try:
        return await open_session(
            ctx.registry,
            admitted.call,
            caller=admitted.admission.principal.key_id,
            deadline=admitted.deadline,
        )
    except EngineError as exc:
        raise from_engine(exc) from exc


async def complete(ctx: AppContext, admitted: Admitted) -> Completed:
    """Run the call to its end; usage is committed before this returns."""
    session: InferenceSession | None = None
    call, admission = admitted.call, admitted.admission
    try:
        session = await start(ctx, admitted)
        opened = time.monotonic()
        choices = [Choice() for _ in range(call.n)]
        async for item in session.events(admitted.deadline):
            if isinstance(item, TextOut):
                admission.mark_first_token()
                choices[item.index].add(item)
            else:
                choices[item.index].end(item)
        counts = counts_of(session)
        await admission.record(counts.prompt_tokens, counts.completion_tokens, 200)
        return Completed(choices, counts, opened)
    except EngineError as exc:
        error = from_engine(exc)
        if session is not None:
            await admission.record(session.prompt_tokens, session.completion_tokens, error.status)
        raise error from exc
    except asyncio.CancelledError:
        if session is not None:
            admission.record_soon(session.prompt_tokens, session.completion_tokens, 499)
        raise
    finally:
        if session is not None:
            session.close()
        admission.release()


async def _frames(
    session: InferenceSession, admission: Admission, renderer: Renderer, deadline: float
) -> AsyncIterator[bytes]:
    finished = False
    try:
        for frame in renderer.opening(counts_of(session)):
            yield frame
        async for item in session.events(deadline):
            if isinstance(item, TextOut):
                admission.mark_first_token()
                for frame in renderer.output(item):
                    yield frame
            elif isinstance(item, ChoiceEnd):
                for frame in renderer.choice_end(item, counts_of(session)):
                    yield frame
        counts = counts_of(session)
        await admission.record(counts.prompt_tokens, counts.completion_tokens, 200)
        finished = True
        for frame in renderer.closing(counts):
            yield frame
    except EngineError as exc:
        error = from_engine(exc)
        await admission.record(session.prompt_tokens, session.completion_tokens, error.status)
        yield renderer.error(error)
    finally:
        if not finished:  # a disconnect: charge what was generated
            admission.record_soon(session.prompt_tokens, session.completion_tokens, 499)
        session.close()
        admission.release()


async def _wait_then_frames(
    opening: Callable[[], Awaitable[InferenceSession]],
    admission: Admission,
    renderer: Renderer,
    deadline: float,
) -> AsyncIterator[bytes]:
    """Start the stream at once and send keep-alives while the model loads."""
    task = asyncio.ensure_future(opening())
    try:
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_SECONDS)
            if not done:
                yield renderer.keepalive()
        session = task.result()
    except EngineError as exc:
        error = from_engine(exc)
        await admission.record(0, 0, error.status)
        yield renderer.error(error)
        admission.release()
        return
    finally:
        if not task.done():
            task.cancel()
            admission.release()
    async for frame in _frames(session, admission, renderer, deadline):
        yield frame


async def stream(
    ctx: AppContext,
    admitted: Admitted,
    renderer: Renderer,
    media_type: str = "text/event-stream",
) -> Stream:
    """A streaming response.  Errors before the first byte are HTTP errors; a model
    that is not ready, or busy (every slot or its KV cache taken, others waiting), is
    waited for up to ``stream_load_wait`` behind keep-alives."""
    registry = ctx.registry
    call, admission, deadline = admitted.call, admitted.admission, admitted.deadline
    try:
        if registry.would_start_now(call.model_id, call.kv_row, call.n):
            session = await start(ctx, admitted)
            body = _frames(session, admission, renderer, deadline)
        else:
            try:
                registry.precheck(call.model_id, admission.principal.key_id, may_load=call.may_load)
            except EngineError as exc:
                raise from_engine(exc) from exc
            wait = ctx.settings.engine.stream_load_wait
            caller = admission.principal.key_id

            def opening() -> Awaitable[InferenceSession]:
                return open_session(registry, call, caller=caller, wait=wait, deadline=deadline)

            body = _wait_then_frames(opening, admission, renderer, deadline)
    except BaseException:
        admission.release()
        raise
    return Stream(body, media_type=media_type, headers=SSE_HEADERS)


async def preload(ctx: AppContext, admitted: Admitted) -> None:
    """A request without a prompt: lease the model (loading it, when the key may)
    and let go at once; the usage row says so, with no tokens."""
    call, admission = admitted.call, admitted.admission
    try:
        lease = await ctx.registry.acquire(
            call.model_id,
            admission.principal.key_id,
            may_load=call.may_load,
            keep_alive=call.keep_alive,
        )
        ctx.registry.release(lease)
        await admission.record(0, 0, 200)
    except EngineError as exc:
        error = from_engine(exc)
        await admission.record(0, 0, error.status)
        raise error from exc
    finally:
        admission.release()
