"""Anthropic Messages API wire formats (msgspec), requests and responses.

Unknown fields are ignored (``cache_control``, ``citations``,
``context_management``, ``metadata``, ``service_tier``: hints for Anthropic's
own servers); content blocks are a tagged union, so a block type the gateway
does not know is a 400 naming it, and blocks it knows but cannot honour
(images, documents, server tools' results) are refused by the codec by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

ToolName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
MAX_TOOLS = 128


class TextBlock(msgspec.Struct, frozen=True, tag="text", tag_field="type"):
    text: str


class ImageBlock(msgspec.Struct, frozen=True, tag="image", tag_field="type"):
    source: Any = None


class DocumentBlock(msgspec.Struct, frozen=True, tag="document", tag_field="type"):
    source: Any = None


class ToolUseBlock(msgspec.Struct, frozen=True, tag="tool_use", tag_field="type"):
    id: Annotated[str, Meta(min_length=1, max_length=256)]
    name: ToolName
    input: dict[str, Any] = {}


class ToolResultBlock(msgspec.Struct, frozen=True, tag="tool_result", tag_field="type"):
    tool_use_id: Annotated[str, Meta(min_length=1, max_length=256)]
    content: str | list[TextBlock | ImageBlock | DocumentBlock] = ""
    is_error: bool = False


class ThinkingBlock(msgspec.Struct, frozen=True, tag="thinking", tag_field="type"):
    thinking: str = ""
    signature: str = ""


class RedactedThinkingBlock(msgspec.Struct, frozen=True, tag="redacted_thinking", tag_field="type"):
    data: str = ""


class ServerToolUseBlock(msgspec.Struct, frozen=True, tag="server_tool_use", tag_field="type"):
    name: str = ""


class WebSearchResultBlock(
    msgspec.Struct, frozen=True, tag="web_search_tool_result", tag_field="type"
):
    tool_use_id: str = ""


Block = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | ServerToolUseBlock
    | WebSearchResultBlock
)
Content = str | Annotated[list[Block], Meta(min_length=1)]


class MessageIn(msgspec.Struct, frozen=True):
    role: Literal["user", "assistant", "system"]
    content: Content


class ToolIn(msgspec.Struct, frozen=True):
    """A client tool (``type`` absent or ``custom``); server tools have other types."""

    name: ToolName
    description: Annotated[str, Meta(max_length=65_536)] = ""
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoiceAuto(msgspec.Struct, frozen=True, tag="auto", tag_field="type"):
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(msgspec.Struct, frozen=True, tag="any", tag_field="type"):
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(msgspec.Struct, frozen=True, tag="tool", tag_field="type"):
    name: ToolName
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(msgspec.Struct, frozen=True, tag="none", tag_field="type"):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class ThinkingEnabled(msgspec.Struct, frozen=True, tag="enabled", tag_field="type"):
    budget_tokens: Annotated[int, Meta(ge=0)] | None = None
    display: Literal["summarized", "omitted"] | None = None


class ThinkingAdaptive(msgspec.Struct, frozen=True, tag="adaptive", tag_field="type"):
    display: Literal["summarized", "omitted"] | None = None


class ThinkingDisabled(msgspec.Struct, frozen=True, tag="disabled", tag_field="type"):
    pass


Thinking = ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled


class CountTokensRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[MessageIn], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: Annotated[list[ToolIn], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    mcp_servers: list[Any] | None = None

    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system or None
        return "\n\n".join(block.text for block in self.system) or None


class MessagesRequest(CountTokensRequest, frozen=True, kw_only=True):
    max_tokens: Annotated[int, Meta(ge=1)]
    stop_sequences: Annotated[list[str], Meta(max_length=16)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    stream: bool = False


class Usage(msgspec.Struct, frozen=True):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


class TextOut(msgspec.Struct, frozen=True, tag="text", tag_field="type"):
    text: str


class ThinkingOut(msgspec.Struct, frozen=True, tag="thinking", tag_field="type"):
    thinking: str
    signature: str


class ToolUseOut(msgspec.Struct, frozen=True, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: Any


class Message(msgspec.Struct, frozen=True):
    id: str
    model: str
    content: list[TextOut | ThinkingOut | ToolUseOut]
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
