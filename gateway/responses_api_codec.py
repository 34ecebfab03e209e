"""The Responses API in the engine's terms, and the engine's output as its items.

Decoding: ``instructions`` and ``input`` items become turns (a run of
``function_call`` items is one assistant turn with tool calls, each
``function_call_output`` a tool turn, ``reasoning`` items are dropped as
templates drop earlier reasoning); ``tools``, ``tool_choice``, ``text.format``
and ``reasoning.effort`` become the ``OutputSpec`` through the chat codec's
``output_spec``.  Encoding: ``ResponseOutput`` turns answer text, reasoning and
tool-call pieces into output items (``reasoning``, ``message``,
``function_call``), for the final response and for the stream's events.
Stateless: nothing is stored, so ``previous_response_id`` cannot be honoured.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from engine.protocol import ChatMessage, OutputSpec, ToolCall, ToolSpec
from gateway.errors import InvalidRequest
from gateway.generation import Counts
from gateway.openai_codec import NO_REASONING, json_constraint, json_text, output_spec
from gateway.responses_api_schema import (
    EasyMessage,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    InputFile,
    InputImage,
    Item,
    MessageItem,
    Part,
    ReasoningItem,
    Refusal,
    ResponsesRequest,
)


def _refuse(what: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by this gateway.", param=param)


def _text(content: str | list[Part], param: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, InputImage | InputFile):
            raise _refuse("Image and file input (the models served here read text)", f"{param}.{j}")
        if isinstance(part, Refusal):
            texts.append(part.refusal)
        else:
            texts.append(part.text)
    return "\n".join(texts)


def _items(req: ResponsesRequest) -> list[Item | EasyMessage]:
    if isinstance(req.input, str):
        return [EasyMessage("user", req.input)]
    items: list[Item | EasyMessage] = []
    for i, raw in enumerate(req.input):
        kind = raw.get("type") if isinstance(raw, dict) else None
        target: Any = EasyMessage if isinstance(raw, dict) and kind is None else Item
        try:
            items.append(msgspec.convert(raw, target))
        except msgspec.ValidationError as exc:
            what = f"input item type `{kind}`" if kind else "this input item"
            raise InvalidRequest(f"input.{i}: {exc} ({what})", param=f"input.{i}") from None
    return items


def conversation(req: ResponsesRequest) -> tuple[ChatMessage, ...]:
    if req.previous_response_id is not None:
        raise InvalidRequest(
            "previous_response_id is not supported: this gateway stores no responses. "
            "Send the whole conversation in `input` (as Codex does with store: false).",
            param="previous_response_id",
        )
    if req.background:
        raise _refuse("`background`", "background")
    turns: list[ChatMessage] = []
    if req.instructions:
        turns.append(ChatMessage("system", req.instructions))
    for i, item in enumerate(_items(req)):
        if isinstance(item, MessageItem | EasyMessage):
            role = "system" if item.role == "developer" else item.role
            turns.append(ChatMessage(role, _text(item.content, f"input.{i}.content")))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(item.call_id, item.name, item.arguments)
            last = turns[-1] if turns else None
            if last is not None and last.role == "assistant":
                turns[-1] = msgspec.structs.replace(last, tool_calls=(*last.tool_calls, call))
            else:
                turns.append(ChatMessage("assistant", "", (call,)))
        elif isinstance(item, FunctionCallOutputItem):
            output = _text(item.output, f"input.{i}.output")
            turns.append(ChatMessage("tool", output, tool_call_id=item.call_id))
        elif isinstance(item, ReasoningItem):
            continue
    if not turns:
        raise InvalidRequest("input holds no message.", param="input")
    return tuple(turns)


# Hosted tools the client offers but the model may do without: not offered to it.
# (Codex offers web_search, with external access off, in every request.)
HOSTED_OPTIONAL = ("web_search", "web_search_preview")


def _function_tools(req: ResponsesRequest) -> list[tuple[str, FunctionTool]]:
    """Function tools with where they came from; a ``namespace`` groups functions."""
    found: list[tuple[str, FunctionTool]] = []
    for i, tool in enumerate(req.tools or ()):
        if tool.type == "function":
            found.append((f"tools.{i}", tool))
        elif tool.type == "namespace":
            for j, inner in enumerate(tool.tools or ()):
                param = f"tools.{i}.tools.{j}"
                try:
                    function = msgspec.convert(inner, FunctionTool)
                except msgspec.ValidationError as exc:
                    raise InvalidRequest(f"{param}: {exc}", param=param) from None
                if function.type != "function":
                    raise _refuse(f"The tool type `{function.type}`", f"{param}.type")
                found.append((param, function))
        elif tool.type not in HOSTED_OPTIONAL or _choice_name(req) == tool.type:
            raise _refuse(f"The tool type `{tool.type}`", f"tools.{i}.type")
    return found


def _choice_name(req: ResponsesRequest) -> str | None:
    choice = req.tool_choice
    return choice if isinstance(choice, str) or choice is None else choice.name


def _tools(req: ResponsesRequest) -> tuple[ToolSpec, ...]:
    tools = []
    for param, tool in _function_tools(req):
        if tool.name is None:
            raise InvalidRequest("A function tool needs a `name`.", param=f"{param}.name")
        parameters = tool.parameters or {"type": "object", "properties": {}}
        text = json_text(parameters, f"{param}.parameters")
        tools.append(ToolSpec(tool.name, tool.description, text))
    if len({t.name for t in tools}) < len(tools):
        raise InvalidRequest("Two tools have the same name.", param="tools")
    return tuple(tools)


def output_of(req: ResponsesRequest) -> OutputSpec:
    named = _choice_name(req)
    fmt = req.text.format if req.text else None
    json_format = None
    if fmt is not None:
        json_format = json_constraint(fmt.type, fmt.schema, "text.format.schema")
    effort = req.reasoning.effort if req.reasoning else None
    reasoning = None if effort is None else effort not in NO_REASONING
    return output_spec(
        _tools(req), named, req.parallel_tool_calls, json_format, reasoning, format_param="text"
    )


def usage_of(counts: Counts) -> dict[str, Any]:
    return {
        "input_tokens": counts.prompt_tokens,
        "input_tokens_details": {"cached_tokens": counts.cached_tokens},
        "output_tokens": counts.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": counts.reasoning_tokens},
        "total_tokens": counts.prompt_tokens + counts.completion_tokens,
    }


def response_object(
    req: ResponsesRequest,
    ident: str,
    model: str,
    created: int,
    output: list[dict[str, Any]],
    *,
    status: str,
    usage: dict[str, Any] | None,
    incomplete: str | None = None,
) -> dict[str, Any]:
    """The ``response`` object, echoing the request's settings."""
    return {
        "id": ident,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "usage": usage,
        "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tool_choice": msgspec.to_builtins(req.tool_choice) if req.tool_choice else "auto",
        "tools": [msgspec.to_builtins(t) for t in req.tools or ()],
        "text": msgspec.to_builtins(req.text) if req.text else {"format": {"type": "text"}},
        "reasoning": msgspec.to_builtins(req.reasoning) if req.reasoning else None,
        "store": False,
        "metadata": req.metadata or {},
    }


def now() -> int:
    return int(time.time())
