"""OpenAI-compatible generation: ``/v1/chat/completions`` and ``/v1/completions``."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream

from engine.errors import EngineError
from engine.protocol import ChatMessage, SamplingParams
from engine.registry import ModelState
from gateway.context import AppContext
from gateway.errors import InvalidRequest
from gateway.inference import ChoiceEnd, InferenceCall, InferenceSession, TextOut, open_session
from gateway.openai_schema import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionChunkWithUsage,
    ChatCompletionRequest,
    ChatDelta,
    CompletionRequest,
    PromptTokensDetails,
    SamplingFields,
    TextChoice,
    TextCompletion,
    Usage,
)
from gateway.responses import decode_body, error_body, from_engine
from gateway.settings import EngineSettings
from gateway.sse import DONE, SSE_HEADERS, event


def sampling_params(
    req: SamplingFields, max_tokens: int | None, limits: EngineSettings
) -> SamplingParams:
    """The engine's sampling parameters from a validated request."""
    if req.unsupported():  # type: ignore[attr-defined]
        field = req.unsupported()  # type: ignore[attr-defined]
        raise InvalidRequest(f"`{field}` is not supported by this gateway.", param=field)
    if req.n > limits.max_choices:
        raise InvalidRequest(f"`n` must be at most {limits.max_choices}.", param="n")
    if max_tokens is not None and max_tokens > limits.max_tokens_limit:
        raise InvalidRequest(
            f"max_tokens must be at most {limits.max_tokens_limit}.", param="max_tokens"
        )
    bias: dict[int, float] = {}
    for key, value in (req.logit_bias or {}).items():
        if not key.isdigit():
            raise InvalidRequest("logit_bias keys must be token ids.", param="logit_bias")
        bias[int(key)] = value
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    if top_p == 0:
        temperature = 0.0
    return SamplingParams(
        max_tokens=max_tokens or limits.default_max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=req.seed,
        stop=req.stops(),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=bias,
    )


KEEPALIVE_SECONDS = 5.0


async def start(ctx: AppContext, call: InferenceCall, caller: str) -> InferenceSession:
    try:
        return await open_session(ctx.registry, call, caller=caller)
    except EngineError as exc:
        raise from_engine(exc) from exc


def caller_of(request: Request, req: SamplingFields) -> str:
    """The fair-queue tag of a request (the API key's id once keys exist)."""
    return req.user or (request.client.host if request.client else "-")


def usage_of(session: InferenceSession) -> Usage:
    return Usage(
        session.prompt_tokens,
        session.completion_tokens,
        session.prompt_tokens + session.completion_tokens,
        PromptTokensDetails(session.cached_tokens),
    )


async def collect(session: InferenceSession, n: int) -> tuple[list[str], list[str]]:
    """Run a session to the end; the text and finish reason of each choice."""
    texts = [""] * n
    reasons = ["stop"] * n
    try:
        async for item in session.events():
            if isinstance(item, TextOut):
                texts[item.index] += item.text
            else:
                reasons[item.index] = item.finish_reason
    except EngineError as exc:
        raise from_engine(exc) from exc
    finally:
        session.close()
    return texts, reasons


async def stream_events(
    session: InferenceSession,
    first: list[bytes],
    chunk: Callable[[int, str | None, str | None], Any],
    usage_chunk: Callable[[Usage], Any] | None,
) -> AsyncIterator[bytes]:
    """SSE frames for a session; an engine failure mid-stream becomes an error event."""
    try:
        for frame in first:
            yield frame
        async for item in session.events():
            if isinstance(item, TextOut):
                if item.text:
                    yield event(chunk(item.index, item.text, None))
            elif isinstance(item, ChoiceEnd):
                yield event(chunk(item.index, None, item.finish_reason))
        if usage_chunk is not None:
            yield event(usage_chunk(usage_of(session)))
        yield DONE
    except EngineError as exc:
        yield event(error_body(from_engine(exc)))
    finally:
        session.close()


async def wait_then_stream(
    opening: Callable[[], Awaitable[InferenceSession]],
    first: list[bytes],
    chunk: Callable[[int, str | None, str | None], Any],
    usage_chunk: Callable[[Usage], Any] | None,
) -> AsyncIterator[bytes]:
    """Start the SSE response at once and send comment keep-alives while the model
    loads, so proxies and clients do not time out; then stream as usual."""
    task = asyncio.ensure_future(opening())
    try:
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_SECONDS)
            if not done:
                yield b": waiting for the model to load\n\n"
        session = task.result()
    except EngineError as exc:
        yield event(error_body(from_engine(exc)))
        return
    finally:
        if not task.done():
            task.cancel()
    async for frame in stream_events(session, first, chunk, usage_chunk):
        yield frame


async def stream_response(
    ctx: AppContext,
    call: InferenceCall,
    caller: str,
    first: list[bytes],
    chunk: Callable[[int, str | None, str | None], Any],
    usage_chunk: Callable[[Usage], Any] | None,
) -> Stream:
    """A streaming response: errors before the first byte are HTTP errors; a model that
    is not ready is waited for up to ``stream_load_wait`` behind keep-alive comments."""
    registry = ctx.registry
    if registry.status(call.model_id).state is ModelState.READY:
        session = await start(ctx, call, caller)
        body = stream_events(session, first, chunk, usage_chunk)
    else:
        try:
            registry.precheck(call.model_id)
        except EngineError as exc:
            raise from_engine(exc) from exc
        wait = ctx.settings.engine.stream_load_wait

        def opening() -> Awaitable[InferenceSession]:
            return open_session(registry, call, caller=caller, wait=wait)

        body = wait_then_stream(opening, first, chunk, usage_chunk)
    return Stream(body, media_type="text/event-stream", headers=SSE_HEADERS)


def context(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request) -> Response[Any] | Stream:
    ctx = context(request)
    req = decode_body(await request.body(), ChatCompletionRequest)
    spec = ctx.resolve_model(req.model)
    params = sampling_params(req, req.max_completion_tokens or req.max_tokens, ctx.settings.engine)
    messages = tuple(
        ChatMessage("system" if m.role == "developer" else m.role, m.text()) for m in req.messages
    )
    call = InferenceCall(spec.id, params, req.n, messages=messages)
    caller = caller_of(request, req)
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if not req.stream:
        session = await start(ctx, call, caller)
        texts, reasons = await collect(session, req.n)
        choices = [ChatChoice(i, AssistantMessage(texts[i]), reasons[i]) for i in range(req.n)]
        return Response(ChatCompletion(ident, created, spec.id, choices, usage_of(session)))

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    chunk_type = ChatCompletionChunkWithUsage if include_usage else ChatCompletionChunk

    def chunk(index: int, text: str | None, finish: str | None) -> Any:
        delta = ChatDelta(content=text) if text is not None else ChatDelta()
        return chunk_type(ident, created, spec.id, [ChatChunkChoice(index, delta, finish)])

    first = [
        event(chunk_type(ident, created, spec.id, [ChatChunkChoice(i, ChatDelta("assistant", ""))]))
        for i in range(req.n)
    ]
    usage = (
        (lambda u: ChatCompletionChunkWithUsage(ident, created, spec.id, [], usage=u))
        if include_usage
        else None
    )
    return await stream_response(ctx, call, caller, first, chunk, usage)


@post("/v1/completions", status_code=200)
async def completions(request: Request) -> Response[Any] | Stream:
    ctx = context(request)
    req = decode_body(await request.body(), CompletionRequest)
    spec = ctx.resolve_model(req.model)
    params = sampling_params(req, req.max_tokens or 16, ctx.settings.engine)
    prompt = req.prompt_text()
    if not prompt:
        raise InvalidRequest("prompt must not be empty.", param="prompt")
    call = InferenceCall(spec.id, params, req.n, prompt=prompt)
    caller = caller_of(request, req)
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    echo = prompt if req.echo else ""

    if not req.stream:
        session = await start(ctx, call, caller)
        texts, reasons = await collect(session, req.n)
        choices = [TextChoice(i, echo + texts[i], reasons[i]) for i in range(req.n)]
        return Response(TextCompletion(ident, created, spec.id, choices, usage_of(session)))

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(index: int, text: str | None, finish: str | None) -> Any:
        return TextCompletion(ident, created, spec.id, [TextChoice(index, text or "", finish)])

    first = [event(chunk(i, echo, None)) for i in range(req.n)] if echo else []
    usage = (lambda u: TextCompletion(ident, created, spec.id, [], u)) if include_usage else None
    return await stream_response(ctx, call, caller, first, chunk, usage)
