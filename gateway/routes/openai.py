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

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from gateway import pipeline
from gateway.errors import GatewayError, InvalidRequest
from gateway.forwarding import forward
from gateway.generation import Choice, Counts, complete, stream
from gateway.inference import ChoiceEnd, TextOut
from gateway.openai_codec import (
    chat_logprobs,
    choice_error,
    finish_reason,
    logprobs_request,
    messages_of,
    output_of,
    sampling_params,
    text_logprobs,
    tool_calls_out,
    usage_of,
)
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
    FunctionDelta,
    TextChoice,
    TextCompletion,
    ToolCallDelta,
    Usage,
)
from gateway.pipeline import Ask, context
from gateway.responses import decode_body, error_body
from gateway.sse import DONE, event


class OpenAIRenderer:
    """OpenAI's SSE frames; ``chunk`` builds one chunk of the route's object type from
    a choice index and its new output (``None``: the choice's end)."""

    def __init__(
        self,
        chunk: Callable[[int, TextOut | None, ChoiceEnd | None], Any],
        first: list[bytes],
        usage_chunk: Callable[[Usage], Any] | None,
    ) -> None:
        self._chunk = chunk
        self._first = first
        self._usage_chunk = usage_chunk

    def opening(self, counts: Counts) -> list[bytes]:
        return self._first

    def output(self, item: TextOut) -> list[bytes]:
        if not (item.text or item.reasoning or item.calls or item.logprobs):
            return []
        return [event(self._chunk(item.index, item, None))]

    def choice_end(self, end: ChoiceEnd, counts: Counts) -> list[bytes]:
        return [event(self._chunk(end.index, None, end))]

    def closing(self, counts: Counts) -> list[bytes]:
        frames = [event(self._usage_chunk(usage_of(counts)))] if self._usage_chunk else []
        return [*frames, DONE]

    def error(self, error: GatewayError) -> bytes:
        return event(error_body(error))

    def keepalive(self) -> bytes:
        return b": waiting for the model\n\n"


def _delta(item: TextOut) -> ChatDelta:
    calls = [
        ToolCallDelta(
            c.index,
            c.id,
            "function" if c.id else None,
            FunctionDelta(c.name, c.arguments if c.arguments or c.name else None),
        )
        for c in item.calls
    ]
    return ChatDelta(
        content=item.text or None,
        reasoning_content=item.reasoning or None,
        tool_calls=calls or None,
    )


def _message(choice: Choice) -> AssistantMessage:
    calls = tool_calls_out(choice)
    return AssistantMessage(
        "assistant",
        choice.text if choice.text or not calls else None,
        tool_calls=calls,
        reasoning_content=choice.reasoning or None,
    )


def _error_frame(error: GatewayError) -> bytes:
    """A forwarded stream's mid-way error, as this route frames errors."""
    return event(error_body(error))


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request) -> Response[Any] | Stream:
    ctx = context(request)
    req = decode_body(await request.body(), ChatCompletionRequest)
    params = sampling_params(req, req.max_completion_tokens or req.max_tokens, ctx.settings.engine)
    params = msgspec.structs.replace(params, logprobs=logprobs_request(req))
    route = "/v1/chat/completions"
    ask = Ask(route, req.model, params, req.n, messages_of(req), output=output_of(req))
    admitted = await pipeline.admit(request, ask)
    if admitted.peer is not None:
        return await forward(request, admitted.admission, admitted.peer, _error_frame)
    model = admitted.spec.id
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    with_logprobs = params.logprobs is not None

    if not req.stream:
        done = await complete(ctx, admitted)
        choices = [
            ChatChoice(
                i,
                _message(c),
                finish_reason(c.finish_reason, c.tool_error),
                chat_logprobs(c.logprobs) if with_logprobs else None,
                choice_error(c.tool_error),
            )
            for i, c in enumerate(done.choices)
        ]
        return Response(ChatCompletion(ident, created, model, choices, usage_of(done.counts)))

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    chunk_type = ChatCompletionChunkWithUsage if include_usage else ChatCompletionChunk

    def chunk(index: int, item: TextOut | None, end: ChoiceEnd | None) -> Any:
        if item is not None:
            logprobs = chat_logprobs(item.logprobs) if with_logprobs and item.logprobs else None
            choice = ChatChunkChoice(index, _delta(item), None, logprobs)
        else:
            assert end is not None
            reason = finish_reason(end.finish_reason, end.tool_error)
            choice = ChatChunkChoice(index, ChatDelta(), reason, None, choice_error(end.tool_error))
        return chunk_type(ident, created, model, [choice])

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
    params = msgspec.structs.replace(params, logprobs=req.logprobs)
    prompt = req.prompt_text()
    if not prompt:
        raise InvalidRequest("prompt must not be empty.", param="prompt")
    ask = Ask("/v1/completions", req.model, params, req.n, prompt=prompt)
    admitted = await pipeline.admit(request, ask)
    if admitted.peer is not None:
        return await forward(request, admitted.admission, admitted.peer, _error_frame)
    model = admitted.spec.id
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    echo = prompt if req.echo else ""
    top = req.logprobs or 0

    if not req.stream:
        done = await complete(ctx, admitted)
        choices = [
            TextChoice(
                i,
                echo + c.text,
                c.finish_reason,
                text_logprobs(c.logprobs, len(echo), top) if req.logprobs is not None else None,
            )
            for i, c in enumerate(done.choices)
        ]
        return Response(TextCompletion(ident, created, model, choices, usage_of(done.counts)))

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    offsets = [len(echo)] * req.n

    def chunk(index: int, item: TextOut | None, end: ChoiceEnd | None) -> Any:
        if item is None:
            assert end is not None
            choice = TextChoice(index, "", end.finish_reason)
        else:
            logprobs = None
            if req.logprobs is not None and item.logprobs:
                logprobs = text_logprobs(item.logprobs, offsets[index], top)
            offsets[index] += len(item.text)
            choice = TextChoice(index, item.text, None, logprobs)
        return TextCompletion(ident, created, model, [choice])

    first = (
        [event(TextCompletion(ident, created, model, [TextChoice(i, echo)])) for i in range(req.n)]
        if echo
        else []
    )
    usage = (lambda u: TextCompletion(ident, created, model, [], u)) if include_usage else None
    return await stream(ctx, admitted, OpenAIRenderer(chunk, first, usage))
