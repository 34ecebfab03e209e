"""Anthropic-compatible ``/v1/messages`` and ``/v1/messages/count_tokens``.

A codec like the OpenAI routes: the body becomes an ``Ask`` for the admission
pipeline (the same checks, registry and usage accounting); only the wire
format differs.  ``claude-*`` and other foreign
names resolve only through the operator's alias table; the response's
``model`` echoes what the client asked for.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from engine.protocol import ChatMessage, SamplingParams
from gateway import pipeline
from gateway.anthropic_schema import (
    CountTokensRequest,
    Message,
    MessagesRequest,
    TextBlock,
    Usage,
)
from gateway.errors import GatewayError, InvalidRequest
from gateway.generation import Counts, complete, stream
from gateway.inference import ChoiceEnd, TextOut
from gateway.pipeline import Ask, context
from gateway.responses import anthropic_body, decode_body

_encoder = msgspec.json.Encoder()


def sse(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(payload) + b"\n\n"


def stop_reason(finish_reason: str, stop_sequence: str | None) -> str:
    if stop_sequence is not None:
        return "stop_sequence"
    return "max_tokens" if finish_reason == "length" else "end_turn"


def conversation(req: CountTokensRequest) -> tuple[ChatMessage, ...]:
    """The messages as the engine takes them; roles must alternate, user first."""
    if req.tools:
        raise InvalidRequest("tools are not supported by this gateway.", param="tools")
    previous = "assistant"
    for i, message in enumerate(req.messages):
        if message.role == previous:
            raise InvalidRequest(
                "messages: roles must alternate between user and assistant, starting with "
                f"user (messages.{i}.role)",
                param=f"messages.{i}.role",
            )
        previous = message.role
    system = req.system_text()
    head = (ChatMessage("system", system),) if system else ()
    return head + tuple(ChatMessage(m.role, m.text()) for m in req.messages)


class AnthropicRenderer:
    """Anthropic's stream: message_start, content block events, message_delta, stop."""

    def __init__(self, ident: str, model: str) -> None:
        self._ident = ident
        self._model = model

    def opening(self, counts: Counts) -> list[bytes]:
        message: dict[str, Any] = {
            "id": self._ident,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": counts.prompt_tokens, "output_tokens": 0},
        }
        return [
            sse("message_start", {"type": "message_start", "message": message}),
            sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            self.keepalive(),
        ]

    def output(self, item: TextOut) -> list[bytes]:
        if not item.text:
            return []
        delta = {"type": "text_delta", "text": item.text}
        return [
            sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        ]

    def choice_end(self, end: ChoiceEnd, counts: Counts) -> list[bytes]:
        delta = {
            "stop_reason": stop_reason(end.finish_reason, end.stop_sequence),
            "stop_sequence": end.stop_sequence,
        }
        return [
            sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": delta,
                    "usage": {"output_tokens": counts.completion_tokens},
                },
            ),
        ]

    def closing(self, counts: Counts) -> list[bytes]:
        return [sse("message_stop", {"type": "message_stop"})]

    def error(self, error: GatewayError) -> bytes:
        return sse("error", anthropic_body(error))

    def keepalive(self) -> bytes:
        return sse("ping", {"type": "ping"})


@post("/v1/messages", status_code=200)
async def messages(request: Request) -> Response[Any] | Stream:
    ctx = context(request)
    req = decode_body(await request.body(), MessagesRequest)
    if req.tool_choice is not None or req.thinking is not None:
        field = "tool_choice" if req.tool_choice is not None else "thinking"
        raise InvalidRequest(f"`{field}` is not supported by this gateway.", param=field)
    limits = ctx.settings.engine
    if req.max_tokens > limits.max_tokens_limit:
        raise InvalidRequest(
            f"max_tokens must be at most {limits.max_tokens_limit}.", param="max_tokens"
        )
    params = SamplingParams(
        max_tokens=req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if not req.top_p else req.top_p,
        top_k=req.top_k or 0,
        stop=tuple(req.stop_sequences or ()),
    )
    ask = Ask("/v1/messages", req.model, params, 1, conversation(req))
    admitted = await pipeline.admit(request, ask)
    ident = f"msg_{uuid.uuid4().hex}"
    if req.stream:
        return await stream(ctx, admitted, AnthropicRenderer(ident, req.model))
    done = await complete(ctx, admitted)
    return Response(
        Message(
            id=ident,
            model=req.model,
            content=[TextBlock("text", done.texts[0])],
            stop_reason=stop_reason(done.finish_reasons[0], done.stop_sequences[0]),
            stop_sequence=done.stop_sequences[0],
            usage=Usage(done.counts.prompt_tokens, done.counts.completion_tokens),
        )
    )


@post("/v1/messages/count_tokens", status_code=200)
async def count_tokens(request: Request) -> dict[str, int]:
    """The prompt's tokens with the model's own tokenizer and chat template: no
    generation, no weights loaded; rate limited and recorded like any request."""
    req = decode_body(await request.body(), CountTokensRequest)
    ask = Ask(
        "/v1/messages/count_tokens", req.model, SamplingParams(max_tokens=0), 1, conversation(req)
    )
    return {"input_tokens": await pipeline.count_tokens(request, ask)}
