"""Anthropic Messages API wire formats (msgspec), requests and responses."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class TextBlock(msgspec.Struct, frozen=True):
    type: Literal["text"]
    text: str


Content = str | Annotated[list[TextBlock], Meta(min_length=1)]


class MessageIn(msgspec.Struct, frozen=True):
    role: Literal["user", "assistant"]
    content: Content

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(block.text for block in self.content)


class CountTokensRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[MessageIn], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Any] | None = None

    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system or None
        return "".join(block.text for block in self.system) or None


class MessagesRequest(CountTokensRequest, frozen=True, kw_only=True):
    max_tokens: Annotated[int, Meta(ge=1)]
    stop_sequences: Annotated[list[str], Meta(max_length=16)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    metadata: dict[str, Any] | None = None
    stream: bool = False
    tool_choice: Any | None = None
    thinking: Any | None = None


class Usage(msgspec.Struct, frozen=True):
    input_tokens: int
    output_tokens: int


class Message(msgspec.Struct, frozen=True):
    id: str
    model: str
    content: list[TextBlock]
    stop_reason: str | None
    stop_sequence: str | None
    usage: Usage
    type: str = "message"
    role: str = "assistant"


class ErrorDetail(msgspec.Struct, frozen=True):
    type: str
    message: str


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorDetail
    type: str = "error"
