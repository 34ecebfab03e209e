"""OpenAI's Responses API: ``POST /v1/responses`` (stateless) and ``GET /v1/responses/{id}``.

A codec like the others: the body becomes an ``Ask`` for the admission
pipeline; the engine's pieces become output items.  ``ResponseOutput`` keeps
the items as they grow and says which stream events each new piece makes, in
the documented order: ``response.created``, ``response.in_progress``, then per
item ``response.output_item.added``, its deltas (``response.output_text.delta``
inside a ``response.content_part.added``/``.done`` pair,
``response.reasoning_text.delta``, ``response.function_call_arguments.delta``),
their ``.done`` events and ``response.output_item.done``, and last
``response.completed`` (``response.incomplete`` when ``max_output_tokens`` was
reached).  Every event has a ``sequence_number``.  Nothing is stored, so
``GET /v1/responses/{id}`` is always 404.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream

from engine.protocol import CallDelta, SamplingParams
from gateway import pipeline
from gateway.errors import GatewayError, RouteNotFound
from gateway.forwarding import forward
from gateway.generation import Choice, Counts, complete, stream
from gateway.inference import ChoiceEnd, TextOut
from gateway.pipeline import Ask, context
from gateway.responses import decode_body, error_body
from gateway.responses_api_codec import (
    conversation,
    now,
    output_of,
    response_object,
    usage_of,
)
from gateway.responses_api_schema import ResponsesRequest

_encoder = msgspec.json.Encoder()


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class ResponseOutput:
    """The output items of one response, and the events that build them."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}  # call index -> its item

    def _add(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._finish_open()
        self.items.append(item)
        self._open = item
        added = {"type": "response.output_item.added", "output_index": len(self.items) - 1}
        events.append(added | {"item": dict(item)})
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            events.append(self._where("response.content_part.added") | {"part": part})
        return events

    def _where(self, kind: str) -> dict[str, Any]:
        assert self._open is not None
        where = {"type": kind, "item_id": self._open["id"], "output_index": len(self.items) - 1}
        if self._open["type"] in ("message", "reasoning"):
            where["content_index"] = 0
        return where

    def _finish_open(self) -> list[dict[str, Any]]:
        item, events = self._open, list[dict[str, Any]]()
        if item is None:
            return events
        if item["type"] == "message":
            text = item["content"][0]["text"]
            events.append(self._where("response.output_text.done") | {"text": text, "logprobs": []})
            events.append(self._where("response.content_part.done") | {"part": item["content"][0]})
        elif item["type"] == "reasoning":
            text = item["content"][0]["text"]
            events.append(self._where("response.reasoning_text.done") | {"text": text})
        else:
            done = {"arguments": item["arguments"], "name": item["name"]}
            events.append(self._where("response.function_call_arguments.done") | done)
        item["status"] = "completed"
        events.append(
            {"type": "response.output_item.done", "output_index": len(self.items) - 1, "item": item}
        )
        self._open = None
        return events

    def feed(self, piece: TextOut) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if piece.reasoning:
            if self._open is None or self._open["type"] != "reasoning":
                events += self._add(
                    {
                        "type": "reasoning",
                        "id": _item_id("rs"),
                        "summary": [],
                        "content": [{"type": "reasoning_text", "text": ""}],
                    }
                )
            assert self._open is not None
            self._open["content"][0]["text"] += piece.reasoning
            events.append(self._where("response.reasoning_text.delta") | {"delta": piece.reasoning})
        if piece.text:
            if self._open is None or self._open["type"] != "message":
                events += self._add(
                    {
                        "type": "message",
                        "id": _item_id("msg"),
                        "status": "in_progress",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "", "annotations": []}],
                    }
                )
            assert self._open is not None
            self._open["content"][0]["text"] += piece.text
            delta = {"delta": piece.text, "logprobs": []}
            events.append(self._where("response.output_text.delta") | delta)
        for call in piece.calls:
            if call.name is not None:
                started: dict[str, Any] = {
                    "type": "function_call",
                    "id": _item_id("fc"),
                    "call_id": call.id or _item_id("call"),
                    "name": call.name,
                    "arguments": "",
                    "status": "in_progress",
                }
                self._calls[call.index] = started
                events += self._add(started)
            item = self._calls.get(call.index)
            if item is not None and call.arguments and item is self._open:
                item["arguments"] += call.arguments
                delta = {"delta": call.arguments}
                events.append(self._where("response.function_call_arguments.delta") | delta)
        return events

    def end(self, tool_error: str | None) -> list[dict[str, Any]]:
        if tool_error is not None:  # a call that did not parse: said, never half-sent
            self.items = [i for i in self.items if i["type"] != "function_call"]
            events = self.feed(TextOut(0, f"({tool_error})"))
            return events + self._finish_open()
        return self._finish_open()


def from_choice(choice: Choice) -> list[dict[str, Any]]:
    """The output items of a finished choice (the unstreamed response)."""
    output = ResponseOutput()
    output.feed(TextOut(0, "", choice.reasoning))
    output.feed(TextOut(0, choice.text))
    for i, call in enumerate(choice.calls):
        output.feed(TextOut(0, "", calls=(CallDelta(i, call.id, call.name, call.arguments),)))
    output.end(choice.tool_error)
    return output.items


class ResponsesRenderer:
    """The Responses stream: ``event: <type>`` and ``data: <json>`` per event."""

    def __init__(self, req: ResponsesRequest, ident: str, model: str) -> None:
        self._req = req
        self._ident = ident
        self._model = model
        self._created = now()
        self._sequence = 0
        self._output = ResponseOutput()
        self._incomplete: str | None = None

    def _event(self, event: dict[str, Any]) -> bytes:
        event = event | {"sequence_number": self._sequence}
        self._sequence += 1
        return b"event: " + event["type"].encode() + b"\ndata: " + _encoder.encode(event) + b"\n\n"

    def _response(self, status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
        return response_object(
            self._req,
            self._ident,
            self._model,
            self._created,
            self._output.items,
            status=status,
            usage=usage,
            incomplete=self._incomplete,
        )

    def opening(self, counts: Counts) -> list[bytes]:
        response = self._response("in_progress", None)
        return [
            self._event({"type": "response.created", "response": response}),
            self._event({"type": "response.in_progress", "response": response}),
        ]

    def output(self, item: TextOut) -> list[bytes]:
        return [self._event(event) for event in self._output.feed(item)]

    def choice_end(self, end: ChoiceEnd, counts: Counts) -> list[bytes]:
        if end.finish_reason == "length":
            self._incomplete = "max_output_tokens"
        return [self._event(event) for event in self._output.end(end.tool_error)]

    def closing(self, counts: Counts) -> list[bytes]:
        status = "incomplete" if self._incomplete else "completed"
        response = self._response(status, usage_of(counts))
        return [self._event({"type": f"response.{status}", "response": response})]

    def error(self, error: GatewayError) -> bytes:
        body = msgspec.to_builtins(error_body(error).error)
        return self._event({"type": "error", **body})

    def keepalive(self) -> bytes:
        return b": waiting for the model\n\n"


def _error_frame(error: GatewayError) -> bytes:
    """A forwarded stream's mid-way error, as this route frames errors."""
    body = {"type": "error", **msgspec.to_builtins(error_body(error).error)}
    return b"event: error\ndata: " + msgspec.json.encode(body) + b"\n\n"


@post("/v1/responses", status_code=200)
async def create_response(request: Request) -> Response[Any] | Stream:
    ctx = context(request)
    req = decode_body(await request.body(), ResponsesRequest)
    limits = ctx.settings.engine
    max_tokens = min(req.max_output_tokens or limits.default_max_tokens, limits.max_tokens_limit)
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0 if top_p == 0 else temperature, top_p=top_p
    )
    ask = Ask(
        "/v1/responses",
        req.model,
        params,
        1,
        conversation(req),
        output=output_of(req),
        format_param="text.format",
    )
    admitted = await pipeline.admit(request, ask)
    if admitted.peer is not None:
        return await forward(request, admitted.admission, admitted.peer, _error_frame)
    ident, model = f"resp_{uuid.uuid4().hex}", admitted.spec.id
    if req.stream:
        return await stream(ctx, admitted, ResponsesRenderer(req, ident, model))
    done = await complete(ctx, admitted)
    choice = done.choices[0]
    incomplete = "max_output_tokens" if choice.finish_reason == "length" else None
    body = response_object(
        req,
        ident,
        model,
        now(),
        from_choice(choice),
        status="incomplete" if incomplete else "completed",
        usage=usage_of(done.counts),
        incomplete=incomplete,
    )
    return Response(body)


@get("/v1/responses/{response_id:str}")
async def get_response(response_id: str) -> None:
    raise RouteNotFound(f"No response {response_id[:64]!r}: this gateway stores no responses.")
