"""OpenAI Responses API wire formats (msgspec): ``POST /v1/responses`` requests.

Input items are a tagged union on ``type`` (a message may leave it out, as the
"easy input message" form does); an item type the gateway does not know is a
400 naming it.  Unknown top-level fields are ignored; the ones that matter are
declared here, including those refused by the codec (``previous_response_id``,
``background``).  Responses themselves are built as plain dicts by
``gateway.responses_api_codec``: their many fields are echoes of the request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway.openai_schema import FunctionName, ReasoningEffort

MAX_TOOLS = 128


class InputText(msgspec.Struct, frozen=True, tag="input_text", tag_field="type"):
    text: str


class OutputText(msgspec.Struct, frozen=True, tag="output_text", tag_field="type"):
    text: str


class InputImage(msgspec.Struct, frozen=True, tag="input_image", tag_field="type"):
    image_url: str | None = None


class InputFile(msgspec.Struct, frozen=True, tag="input_file", tag_field="type"):
    filename: str | None = None


class Refusal(msgspec.Struct, frozen=True, tag="refusal", tag_field="type"):
    refusal: str = ""


Part = InputText | OutputText | InputImage | InputFile | Refusal


class MessageItem(msgspec.Struct, frozen=True, tag="message", tag_field="type"):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]


class FunctionCallItem(msgspec.Struct, frozen=True, tag="function_call", tag_field="type"):
    call_id: Annotated[str, Meta(min_length=1, max_length=256)]
    name: FunctionName
    arguments: Annotated[str, Meta(max_length=1_000_000)] = "{}"


class FunctionCallOutputItem(
    msgspec.Struct, frozen=True, tag="function_call_output", tag_field="type"
):
    call_id: Annotated[str, Meta(min_length=1, max_length=256)]
    output: str | list[Part] = ""


class ReasoningItem(msgspec.Struct, frozen=True, tag="reasoning", tag_field="type"):
    summary: list[Any] = []


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem


class EasyMessage(msgspec.Struct, frozen=True):
    """A message item without ``type`` (``{"role": "user", "content": "hi"}``)."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]


class FunctionTool(msgspec.Struct, frozen=True):
    """A ``function`` tool, a ``namespace`` of them (``tools``), or a hosted tool."""

    type: str
    name: FunctionName | None = None
    description: Annotated[str, Meta(max_length=65_536)] = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    tools: Annotated[list[Any], Meta(max_length=MAX_TOOLS)] | None = None


class NamedFunction(msgspec.Struct, frozen=True):
    type: Literal["function"]
    name: FunctionName


class TextFormat(msgspec.Struct, frozen=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class TextOptions(msgspec.Struct, frozen=True):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningOptions(msgspec.Struct, frozen=True):
    effort: ReasoningEffort | None = None
    summary: str | None = None


class ResponsesRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    input: str | Annotated[list[Any], Meta(min_length=1)]
    instructions: str | None = None
    tools: Annotated[list[FunctionTool], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
