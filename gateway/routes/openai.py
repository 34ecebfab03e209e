"""OpenAI-compatible generation: ``/v1/chat/completions`` and ``/v1/completions``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream

from engine.protocol import ChatMessage, SamplingParams
from gateway.admission import admit
from gateway.auth import principal_of
from gateway.context import AppContext
from gateway.errors import GatewayError, InvalidRequest
from gateway.generation import Counts, complete, stream
from gateway.hub import ensure_on_disk
from gateway.inference import ChoiceEnd, InferenceCall
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
from gateway.responses import decode_body, error_body
from gateway.settings import EngineSettings
from gateway.sse import DONE, event
from policies.principal import Principal


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


def caller_of(principal: Principal) -> str:
    """The fair-queue tag of a request: the key it came with."""
    return principal.key_id


def estimated_tokens(text_chars: int, params: SamplingParams, n: int) -> int:
    """What a request may cost, for tokens-per-minute limits before it runs: about four
    characters per prompt token, plus every completion token it may generate."""
    return text_chars // 4 + 1 + params.max_tokens * n


def usage_of(counts: Counts) -> Usage:
    return Usage(
        counts.prompt_tokens,
        counts.completion_tokens,
        counts.prompt_tokens + counts.completion_tokens,
        PromptTokensDetails(counts.cached_tokens),
    )


class OpenAIRenderer:
    """OpenAI's SSE frames; ``chunk`` builds one chunk of the route's object type."""

    def __init__(
        self,
        chunk: Callable[[int, str | None, str | None], Any],
        first: list[bytes],
        usage_chunk: Callable[[Usage], Any] | None,
    ) -> None:
        self._chunk = chunk
        self._first = first
        self._usage_chunk = usage_chunk

    def opening(self, counts: Counts) -> list[bytes]:
        return self._first

    def text(self, index: int, text: str) -> bytes:
        return event(self._chunk(index, text, None))

    def choice_end(self, end: ChoiceEnd, counts: Counts) -> list[bytes]:
        return [event(self._chunk(end.index, None, end.finish_reason))]

    def closing(self, counts: Counts) -> list[bytes]:
        frames = [event(self._usage_chunk(usage_of(counts)))] if self._usage_chunk else []
        return [*frames, DONE]

    def error(self, error: GatewayError) -> bytes:
        return event(error_body(error))

    def keepalive(self) -> bytes:
        return b": waiting for the model to load\n\n"


def context(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request) -> Response[Any] | Stream:
    ctx = context(request)
    req = decode_body(await request.body(), ChatCompletionRequest)
    spec = ctx.resolve_model(req.model)
    request.state.model = spec.id
    params = sampling_params(req, req.max_completion_tokens or req.max_tokens, ctx.settings.engine)
    messages = tuple(
        ChatMessage("system" if m.role == "developer" else m.role, m.text()) for m in req.messages
    )
    principal = principal_of(request)
    spec = await ensure_on_disk(ctx, principal, spec)
    call = InferenceCall(spec.id, params, req.n, messages=messages)
    chars = sum(len(m.content) for m in messages)
    admission = admit(
        ctx,
        principal,
        spec,
        requested_tokens=estimated_tokens(chars, params, req.n),
        route="/v1/chat/completions",
    )
    admission.scope_state = request.scope.setdefault("state", {})
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if not req.stream:
        done = await complete(ctx, call, caller_of(principal), admission)
        choices = [
            ChatChoice(i, AssistantMessage(done.texts[i]), done.finish_reasons[i])
            for i in range(req.n)
        ]
        return Response(ChatCompletion(ident, created, spec.id, choices, usage_of(done.counts)))

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
    renderer = OpenAIRenderer(chunk, first, usage)
    return await stream(ctx, call, caller_of(principal), admission, renderer)


@post("/v1/completions", status_code=200)
async def completions(request: Request) -> Response[Any] | Stream:
    ctx = context(request)
    req = decode_body(await request.body(), CompletionRequest)
    spec = ctx.resolve_model(req.model)
    params = sampling_params(req, req.max_tokens or 16, ctx.settings.engine)
    prompt = req.prompt_text()
    if not prompt:
        raise InvalidRequest("prompt must not be empty.", param="prompt")
    principal = principal_of(request)
    spec = await ensure_on_disk(ctx, principal, spec)
    call = InferenceCall(spec.id, params, req.n, prompt=prompt)
    admission = admit(
        ctx,
        principal,
        spec,
        requested_tokens=estimated_tokens(len(prompt), params, req.n),
        route="/v1/completions",
    )
    admission.scope_state = request.scope.setdefault("state", {})
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    echo = prompt if req.echo else ""

    if not req.stream:
        done = await complete(ctx, call, caller_of(principal), admission)
        choices = [
            TextChoice(i, echo + done.texts[i], done.finish_reasons[i]) for i in range(req.n)
        ]
        return Response(TextCompletion(ident, created, spec.id, choices, usage_of(done.counts)))

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(index: int, text: str | None, finish: str | None) -> Any:
        return TextCompletion(ident, created, spec.id, [TextChoice(index, text or "", finish)])

    first = [event(chunk(i, echo, None)) for i in range(req.n)] if echo else []
    usage = (lambda u: TextCompletion(ident, created, spec.id, [], u)) if include_usage else None
    renderer = OpenAIRenderer(chunk, first, usage)
    return await stream(ctx, call, caller_of(principal), admission, renderer)
