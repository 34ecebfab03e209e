"""OpenAI-compatible generation: ``/v1/chat/completions`` and ``/v1/completions``.

A codec: the request body becomes an ``Ask`` for the admission pipeline
(``gateway.pipeline``, which runs every check) and the engine's events become
OpenAI's JSON or SSE chunks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream

from engine.protocol import ChatMessage, SamplingParams
from gateway import pipeline
from gateway.errors import GatewayError, InvalidRequest
from gateway.generation import Counts, complete, stream
from gateway.inference import ChoiceEnd
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
from gateway.pipeline import Ask, context
from gateway.responses import decode_body, error_body
from gateway.settings import EngineSettings
from gateway.sse import DONE, event


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
        # ASCII digits only ("²".isdigit() is true), and no id past any vocabulary.
        if not (key.isascii() and key.isdigit()) or len(key) > 9:
            raise InvalidRequest(
                "logit_bias keys must be token ids inside the model's vocabulary.",
                param="logit_bias",
            )
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


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request) -> Response[Any] | Stream:
    ctx = context(request)
    req = decode_body(await request.body(), ChatCompletionRequest)
    params = sampling_params(req, req.max_completion_tokens or req.max_tokens, ctx.settings.engine)
    messages = tuple(
        ChatMessage("system" if m.role == "developer" else m.role, m.text()) for m in req.messages
    )
    route = "/v1/chat/completions"
    admitted = await pipeline.admit(request, Ask(route, req.model, params, req.n, messages))
    model = admitted.spec.id
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if not req.stream:
        done = await complete(ctx, admitted)
        choices = [
            ChatChoice(i, AssistantMessage(done.texts[i]), done.finish_reasons[i])
            for i in range(req.n)
        ]
        return Response(ChatCompletion(ident, created, model, choices, usage_of(done.counts)))

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    chunk_type = ChatCompletionChunkWithUsage if include_usage else ChatCompletionChunk

    def chunk(index: int, text: str | None, finish: str | None) -> Any:
        delta = ChatDelta(content=text) if text is not None else ChatDelta()
        return chunk_type(ident, created, model, [ChatChunkChoice(index, delta, finish)])

    first = [
        event(chunk_type(ident, created, model, [ChatChunkChoice(i, ChatDelta("assistant", ""))]))
        for i in range(req.n)
    ]
    usage = (
        (lambda u: ChatCompletionChunkWithUsage(ident, created, model, [], usage=u))
        if include_usage
        else None
    )
    return await stream(ctx, admitted, OpenAIRenderer(chunk, first, usage))


@post("/v1/completions", status_code=200)
async def completions(request: Request) -> Response[Any] | Stream:
    ctx = context(request)
    req = decode_body(await request.body(), CompletionRequest)
    params = sampling_params(req, req.max_tokens or 16, ctx.settings.engine)
    prompt = req.prompt_text()
    if not prompt:
        raise InvalidRequest("prompt must not be empty.", param="prompt")
    ask = Ask("/v1/completions", req.model, params, req.n, prompt=prompt)
    admitted = await pipeline.admit(request, ask)
    model = admitted.spec.id
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    echo = prompt if req.echo else ""

    if not req.stream:
        done = await complete(ctx, admitted)
        choices = [
            TextChoice(i, echo + done.texts[i], done.finish_reasons[i]) for i in range(req.n)
        ]
        return Response(TextCompletion(ident, created, model, choices, usage_of(done.counts)))

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(index: int, text: str | None, finish: str | None) -> Any:
        return TextCompletion(ident, created, model, [TextChoice(index, text or "", finish)])

    first = [event(chunk(i, echo, None)) for i in range(req.n)] if echo else []
    usage = (lambda u: TextCompletion(ident, created, model, [], u)) if include_usage else None
    return await stream(ctx, admitted, OpenAIRenderer(chunk, first, usage))
