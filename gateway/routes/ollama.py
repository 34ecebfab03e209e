"""Ollama-compatible generation: ``/api/chat`` and ``/api/generate``.

A codec like the OpenAI and Anthropic routes: the body becomes an ``Ask`` for
the admission pipeline (the same keys, policies, usage, metrics and registry)
and the engine's events become Ollama's NDJSON objects, one per line, streamed
unless the request says ``"stream": false``.  A request without a prompt (no
messages, an empty prompt) only loads the model, or with ``keep_alive: 0``
unloads it, as Ollama's clients use it.  The model routes (tags, ps, show,
pull, delete) are in ``gateway.routes.ollama_models``.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from engine.protocol import SamplingParams
from gateway import pipeline
from gateway.errors import GatewayError
from gateway.forwarding import forward
from gateway.generation import Choice, Completed, Counts, complete, preload, stream
from gateway.inference import ChoiceEnd, TextOut
from gateway.ollama_codec import (
    Clock,
    check_generate,
    done_reason,
    error_text,
    generate_messages,
    keep_alive_seconds,
    logprobs_of,
    logprobs_out,
    messages_of,
    model_id_of,
    now_iso,
    output_of,
    sampling_params,
    tool_calls_out,
)
from gateway.ollama_schema import ChatRequest, GenerateRequest, GenerationFields
from gateway.pipeline import Ask, context
from gateway.responses import decode_body, ollama_body

NDJSON = "application/x-ndjson"
_encoder = msgspec.json.Encoder()


def line(payload: Any) -> bytes:
    return _encoder.encode(payload) + b"\n"


class OllamaRenderer:
    """Ollama's stream: one object per piece of text or reasoning, the tool calls
    whole once the choice ends (Ollama never sends half a call), then the final
    object with ``done``, ``done_reason``, the counts and the durations."""

    def __init__(self, model: str, chat: bool, clock: Clock, logprobs: bool) -> None:
        self._model = model
        self._chat = chat
        self._clock = clock
        self._logprobs = logprobs
        self._calls = Choice()
        self._reason = "stop"

    def _object(
        self,
        text: str,
        reasoning: str = "",
        calls: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return (
            answer(self._model, self._chat, text, reasoning, calls)
            | {"done": False}
            | (extra or {})
        )

    def opening(self, counts: Counts) -> list[bytes]:
        self._clock.open()
        return []

    def output(self, item: TextOut) -> list[bytes]:
        if item.calls:
            self._calls.add(TextOut(item.index, "", calls=item.calls))
        if not (item.text or item.reasoning or item.logprobs):
            return []
        self._clock.token()
        extra: dict[str, Any] = {}
        if self._logprobs and item.logprobs:
            extra["logprobs"] = logprobs_out(Choice(logprobs=list(item.logprobs)))
        return [line(self._object(item.text, item.reasoning, extra=extra))]

    def choice_end(self, end: ChoiceEnd, counts: Counts) -> list[bytes]:
        self._clock.token()
        self._reason = done_reason(end.finish_reason)
        self._calls.end(end)
        if end.tool_error is not None:
            return [line(self._object(error_text(end.tool_error)))]
        if self._calls.calls:
            return [line(self._object("", calls=tool_calls_out(self._calls)))]
        return []

    def closing(self, counts: Counts) -> list[bytes]:
        self._clock.finish()
        durations = self._clock.durations(counts.prompt_tokens, counts.completion_tokens)
        final = {"done": True, "done_reason": self._reason, **durations}
        return [line(self._object("", extra=final))]

    def error(self, error: GatewayError) -> bytes:
        return line(ollama_body(error))

    def keepalive(self) -> bytes:
        return line(self._object(""))  # an empty piece: Ollama's clients read on


def answer(
    model: str,
    chat: bool,
    text: str,
    reasoning: str = "",
    calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One object of an answer: chat's ``message`` or generate's ``response``."""
    body: dict[str, Any] = {"model": model, "created_at": now_iso()}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning:
            message["thinking"] = reasoning
        if calls:
            message["tool_calls"] = calls
        body["message"] = message
    else:
        body["response"] = text
        if reasoning:
            body["thinking"] = reasoning
    return body


def _final(model: str, chat: bool, done: Completed, clock: Clock, logprobs: bool) -> dict[str, Any]:
    choice = done.choices[0]
    clock.opened = done.opened
    clock.finish()
    text = choice.text
    if choice.tool_error is not None:
        text += error_text(choice.tool_error)
    calls = tool_calls_out(choice) if chat else None
    body = answer(model, chat, text, choice.reasoning, calls)
    if logprobs:
        body["logprobs"] = logprobs_out(choice)
    counts = done.counts
    durations = clock.durations(counts.prompt_tokens, counts.completion_tokens)
    return body | {"done": True, "done_reason": done_reason(choice.finish_reason)} | durations


async def _residency(request: Request, req: GenerationFields, route: str, chat: bool) -> Any:
    """No prompt: load the model (as a request would), or unload it (``keep_alive: 0``)."""
    ctx = context(request)
    keep_alive = keep_alive_seconds(req.keep_alive)
    params = SamplingParams(max_tokens=0)
    ask = Ask(route, model_id_of(req.model), params, keep_alive=keep_alive, load_only=True)
    admitted = await pipeline.admit(request, ask)
    if admitted.peer is not None:
        return await forward(request, admitted.admission, admitted.peer, _error_frame)
    if ask.unloads:
        try:
            ctx.registry.set_keep_alive(admitted.spec.id, 0)
            await admitted.admission.record(0, 0, 200)
        finally:
            admitted.admission.release()
        reason = "unload"
    else:
        await preload(ctx, admitted)
        reason = "load"
    body = answer(req.model, chat, "") | {"done": True, "done_reason": reason}
    if req.stream:
        return Response(line(body), media_type=NDJSON)
    return Response(body)


async def _run(request: Request, req: GenerationFields, ask: Ask, chat: bool) -> Any:
    ctx = context(request)
    clock = Clock(time.monotonic())
    admitted = await pipeline.admit(request, ask)
    if admitted.peer is not None:
        return await forward(request, admitted.admission, admitted.peer, _error_frame)
    logprobs = ask.params.logprobs is not None
    if req.stream:
        renderer = OllamaRenderer(req.model, chat, clock, logprobs)
        return await stream(ctx, admitted, renderer, media_type=NDJSON)
    done = await complete(ctx, admitted)
    clock.first_token = admitted.admission.first_token
    return Response(_final(req.model, chat, done, clock, logprobs))


def _params(request: Request, req: GenerationFields) -> SamplingParams:
    params = sampling_params(req.options, context(request).settings.engine)
    return msgspec.structs.replace(params, logprobs=logprobs_of(req))


def _window(req: GenerationFields) -> int | None:
    return req.options.num_ctx if req.options is not None else None


def _error_frame(error: GatewayError) -> bytes:
    """A forwarded stream's mid-way error, as this route frames errors."""
    return line(ollama_body(error))


@post("/api/chat", status_code=200)
async def chat(request: Request) -> Response[Any] | Stream:
    req = decode_body(await request.body(), ChatRequest)
    if not req.messages:
        return await _residency(request, req, "/api/chat", chat=True)
    ask = Ask(
        "/api/chat",
        model_id_of(req.model),
        _params(request, req),
        messages=messages_of(req),
        output=output_of(req, req.tools),
        context_limit=_window(req),
        keep_alive=keep_alive_seconds(req.keep_alive),
        format_param="format",
    )
    return await _run(request, req, ask, chat=True)


@post("/api/generate", status_code=200)
async def generate(request: Request) -> Response[Any] | Stream:
    req = decode_body(await request.body(), GenerateRequest)
    check_generate(req)
    if not req.prompt:
        return await _residency(request, req, "/api/generate", chat=False)
    fields: dict[str, Any] = (
        {"prompt": req.prompt} if req.raw else {"messages": generate_messages(req)}
    )
    ask = Ask(
        "/api/generate",
        model_id_of(req.model),
        _params(request, req),
        output=output_of(req),
        context_limit=_window(req),
        keep_alive=keep_alive_seconds(req.keep_alive),
        format_param="format",
        **fields,
    )
    return await _run(request, req, ask, chat=False)
