"""Running an admitted inference call, for any wire format (OpenAI now, Anthropic next).

``complete`` runs a call to the end and returns texts, finish reasons and
counts.  ``stream`` returns a streaming response whose frames a ``Renderer``
of the wire format produces.  Both charge the real token counts to the
admission and commit the usage row before the last byte, and release the
key's concurrency slot on every exit path: completion, engine error, a
client that disconnects, a drain that cancels.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from litestar.response import Stream

from engine.errors import EngineError
from engine.registry import ModelState
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


@dataclass(frozen=True)
class Completed:
    texts: list[str]
    finish_reasons: list[str]
    counts: Counts
    stop_sequences: list[str | None]


class Renderer(Protocol):
    """The frames of one wire format's stream."""

    def opening(self, counts: Counts) -> list[bytes]: ...

    def text(self, index: int, text: str) -> bytes: ...

    def choice_end(self, end: ChoiceEnd, counts: Counts) -> list[bytes]: ...

    def closing(self, counts: Counts) -> list[bytes]: ...

    def error(self, error: GatewayError) -> bytes: ...

    def keepalive(self) -> bytes: ...


def counts_of(session: InferenceSession) -> Counts:
    return Counts(session.prompt_tokens, session.completion_tokens, session.cached_tokens)


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
        texts = [""] * call.n
        reasons = ["stop"] * call.n
        stops: list[str | None] = [None] * call.n
        async for item in session.events(admitted.deadline):
            if isinstance(item, TextOut):
                admission.mark_first_token()
                texts[item.index] += item.text
            else:
                reasons[item.index] = item.finish_reason
                stops[item.index] = item.stop_sequence
        counts = counts_of(session)
        await admission.record(counts.prompt_tokens, counts.completion_tokens, 200)
        return Completed(texts, reasons, counts, stops)
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
                if item.text:
                    admission.mark_first_token()
                    yield renderer.text(item.index, item.text)
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


async def stream(ctx: AppContext, admitted: Admitted, renderer: Renderer) -> Stream:
    """A streaming response.  Errors before the first byte are HTTP errors; a model
    that is not ready is waited for up to ``stream_load_wait`` behind keep-alives."""
    registry = ctx.registry
    call, admission, deadline = admitted.call, admitted.admission, admitted.deadline
    try:
        if registry.status(call.model_id).state is ModelState.READY:
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
    return Stream(body, media_type="text/event-stream", headers=SSE_HEADERS)
