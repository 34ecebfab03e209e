"""Anthropic-compatible ``/v1/messages`` and ``/v1/messages/count_tokens``.

A codec like the OpenAI routes: the body becomes an ``Ask`` for the admission
pipeline (the same checks, registry and usage accounting); only the wire
format differs (``gateway.anthropic_codec`` maps it).  ``claude-*`` and other
foreign names resolve only through the operator's alias table; the response's
``model`` echoes what the client asked for.  Query parameters (``?beta=true``)
and ``anthropic-beta`` headers are accepted and change nothing.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from engine.protocol import SamplingParams
from gateway import pipeline
from gateway.anthropic_codec import (
    conversation,
    output_of,
    signature,
    thinking_omitted,
    tool_use_id,
)
from gateway.anthropic_schema import (
    CountTokensRequest,
    Message,
    MessagesRequest,
    ThinkingOut,
    ToolUseOut,
    Usage,
)
from gateway.anthropic_schema import (
    TextOut as TextBlockOut,
)
from gateway.errors import GatewayError
from gateway.forwarding import forward
from gateway.generation import Choice, Counts, complete, stream
from gateway.inference import ChoiceEnd, TextOut
from gateway.pipeline import Ask, context
from gateway.responses import anthropic_body, decode_body

_encoder = msgspec.json.Encoder()


def sse(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(payload) + b"\n\n"


def stop_reason(finish_reason: str, stop_sequence: str | None) -> str:
    if stop_sequence is not None:
        return "stop_sequence"
    if finish_reason == "tool_calls":
        return "tool_use"
    return "max_tokens" if finish_reason == "length" else "end_turn"


def usage_of(counts: Counts) -> Usage:
    """Anthropic counts cached prompt tokens apart from ``input_tokens``."""
    return Usage(
        counts.prompt_tokens - counts.cached_tokens,
        counts.completion_tokens,
        cache_read_input_tokens=counts.cached_tokens,
    )


def _error_text(tool_error: str) -> str:
    return f"({tool_error})"


class AnthropicRenderer:
    """Anthropic's stream: message_start, then content blocks (thinking, text,
    tool_use) each opened when its first piece arrives and closed when another
    kind begins, then message_delta and message_stop."""

    def __init__(self, ident: str, model: str, *, omit_thinking: bool = False) -> None:
        self._ident = ident
        self._model = model
        self._omit_thinking = omit_thinking
        self._index = -1
        self._open: str | None = None  # "thinking", "text" or "tool:<call index>"
        self._thinking = ""

    def opening(self, counts: Counts) -> list[bytes]:
        usage = msgspec.to_builtins(usage_of(counts)) | {"output_tokens": 0}
        message: dict[str, Any] = {
            "id": self._ident,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return [
            sse("message_start", {"type": "message_start", "message": message}),
            self.keepalive(),
        ]

    def _start(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        frames = self._close()
        self._index += 1
        self._open = kind
        event = {"type": "content_block_start", "index": self._index, "content_block": block}
        return [*frames, sse("content_block_start", event)]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        frames = []
        if self._open == "thinking":
            delta = {"type": "signature_delta", "signature": signature(self._thinking)}
            frames.append(self._delta(delta))
        self._open = None
        event = {"type": "content_block_stop", "index": self._index}
        return [*frames, sse("content_block_stop", event)]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return sse("content_block_delta", event)

    def output(self, item: TextOut) -> list[bytes]:
        frames: list[bytes] = []
        if item.reasoning:
            if self._open != "thinking":
                frames += self._start("thinking", {"type": "thinking", "thinking": ""})
            text = "" if self._omit_thinking else item.reasoning
            self._thinking += text
            if text:
                frames.append(self._delta({"type": "thinking_delta", "thinking": text}))
        if item.text:
            if self._open != "text":
                frames += self._start("text", {"type": "text", "text": ""})
            frames.append(self._delta({"type": "text_delta", "text": item.text}))
        for piece in item.calls:
            kind = f"tool:{piece.index}"
            if piece.name is not None:
                block = {
                    "type": "tool_use",
                    "id": tool_use_id(piece.id or ""),
                    "name": piece.name,
                    "input": {},
                }
                frames += self._start(kind, block)
            if piece.arguments and self._open == kind:
                delta = {"type": "input_json_delta", "partial_json": piece.arguments}
                frames.append(self._delta(delta))
        return frames

    def choice_end(self, end: ChoiceEnd, counts: Counts) -> list[bytes]:
        frames: list[bytes] = []
        if end.tool_error is not None:
            frames += self._start("text", {"type": "text", "text": ""})
            frames.append(self._delta({"type": "text_delta", "text": _error_text(end.tool_error)}))
        elif self._index < 0:  # nothing at all was generated: one empty text block
            frames += self._start("text", {"type": "text", "text": ""})
        frames += self._close()
        delta = {
            "stop_reason": stop_reason(end.finish_reason, end.stop_sequence),
            "stop_sequence": end.stop_sequence,
        }
        event = {
            "type": "message_delta",
            "delta": delta,
            "usage": {"output_tokens": counts.completion_tokens},
        }
        return [*frames, sse("message_delta", event)]

    def closing(self, counts: Counts) -> list[bytes]:
        return [sse("message_stop", {"type": "message_stop"})]

    def error(self, error: GatewayError) -> bytes:
        return sse("error", anthropic_body(error))

    def keepalive(self) -> bytes:
        return sse("ping", {"type": "ping"})


def _content(choice: Choice, omit_thinking: bool) -> list[TextBlockOut | ThinkingOut | ToolUseOut]:
    blocks: list[TextBlockOut | ThinkingOut | ToolUseOut] = []
    if choice.reasoning:
        thinking = "" if omit_thinking else choice.reasoning
        blocks.append(ThinkingOut(thinking, signature(thinking)))
    if choice.text:
        blocks.append(TextBlockOut(choice.text))
    if choice.tool_error is not None:
        blocks.append(TextBlockOut(_error_text(choice.tool_error)))
    for call in choice.calls:
        blocks.append(ToolUseOut(tool_use_id(call.id), call.name, json.loads(call.arguments)))
    return blocks or [TextBlockOut("")]


def _error_frame(error: GatewayError) -> bytes:
    """A forwarded stream's mid-way error, as this route frames errors."""
    return sse("error", anthropic_body(error))


@post("/v1/messages", status_code=200)
async def messages(request: Request) -> Response[Any] | Stream:
    ctx = context(request)
    req = decode_body(await request.body(), MessagesRequest)
    limits = ctx.settings.engine
    params = SamplingParams(
        max_tokens=min(req.max_tokens, limits.max_tokens_limit),  # a ceiling
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if not req.top_p else req.top_p,
        top_k=req.top_k or 0,
        stop=tuple(req.stop_sequences or ()),
    )
    ask = Ask("/v1/messages", req.model, params, 1, conversation(req), output=output_of(req))
    admitted = await pipeline.admit(request, ask)
    if admitted.peer is not None:
        return await forward(request, admitted.admission, admitted.peer, _error_frame)
    ident = f"msg_{uuid.uuid4().hex}"
    omit = thinking_omitted(req)
    if req.stream:
        return await stream(ctx, admitted, AnthropicRenderer(ident, req.model, omit_thinking=omit))
    done = await complete(ctx, admitted)
    choice = done.choices[0]
    return Response(
        Message(
            id=ident,
            model=req.model,
            content=_content(choice, omit),
            stop_reason=stop_reason(choice.finish_reason, choice.stop_sequence),
            stop_sequence=choice.stop_sequence,
            usage=usage_of(done.counts),
        )
    )


@post("/v1/messages/count_tokens", status_code=200)
async def count_tokens(request: Request) -> dict[str, int]:
    """The prompt's tokens with the model's own tokenizer and chat template (tools
    included): no generation, no weights loaded; rate limited and recorded like
    any request."""
    req = decode_body(await request.body(), CountTokensRequest)
    ask = Ask(
        "/v1/messages/count_tokens",
        req.model,
        SamplingParams(max_tokens=0),
        1,
        conversation(req),
        output=output_of(req),
    )
    return {"input_tokens": await pipeline.count_tokens(request, ask)}
