"""Anthropic Messages requests into the engine's terms, and its output back.

The rule: a field that is a hint for Anthropic's own servers (``cache_control``,
``context_management``, ``metadata``, ``service_tier``, ``anthropic-beta``
values, ``?beta=true``) is accepted and ignored; a field that would change the
output and cannot be honoured (images and documents on a text model, server
tools, MCP servers) is a 400 naming it.  ``docs/api.md`` has the table.
"""

from __future__ import annotations

import hashlib
import json

from engine.protocol import ChatMessage, Constraint, OutputSpec, ToolCall, ToolSpec
from gateway.anthropic_schema import (
    CountTokensRequest,
    DocumentBlock,
    ImageBlock,
    MessageIn,
    RedactedThinkingBlock,
    ServerToolUseBlock,
    TextBlock,
    ThinkingAdaptive,
    ThinkingBlock,
    ThinkingDisabled,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    WebSearchResultBlock,
)
from gateway.errors import InvalidRequest
from gateway.openai_codec import json_text

EMPTY_SCHEMA = {"type": "object", "properties": {}}


def _refuse(what: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by this gateway.", param=param)


def _text_of(blocks: list[TextBlock | ImageBlock | DocumentBlock] | str, param: str) -> str:
    if isinstance(blocks, str):
        return blocks
    parts = []
    for j, block in enumerate(blocks):
        if isinstance(block, ImageBlock):
            raise _refuse("An image (the models served here read text only)", f"{param}.{j}")
        if isinstance(block, DocumentBlock):
            raise _refuse("A document block", f"{param}.{j}")
        parts.append(block.text)
    return "\n".join(parts)


def _turns(i: int, message: MessageIn) -> list[ChatMessage]:
    """One Anthropic message as engine turns: tool results become tool turns."""
    if isinstance(message.content, str):
        return [ChatMessage(message.role, message.content)]
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[ChatMessage] = []
    for j, block in enumerate(message.content):
        param = f"messages.{i}.content.{j}"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            if message.role != "assistant":
                raise InvalidRequest("tool_use blocks belong to assistant turns.", param=param)
            calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
        elif isinstance(block, ToolResultBlock):
            if message.role != "user":
                raise InvalidRequest("tool_result blocks belong to user turns.", param=param)
            content = _text_of(block.content, f"{param}.content")
            if block.is_error:
                content = f"Error: {content}"
            results.append(ChatMessage("tool", content, tool_call_id=block.tool_use_id))
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            continue  # earlier reasoning: templates drop it from the prompt
        elif isinstance(block, ServerToolUseBlock | WebSearchResultBlock):
            raise _refuse("Server tools (web search, code execution)", param)
        else:
            _text_of([block], param)  # images, documents: refused by name
    turns = results
    if texts or calls or not results:
        turns = [*results, ChatMessage(message.role, "\n".join(texts), tuple(calls))]
    return turns


def conversation(req: CountTokensRequest) -> tuple[ChatMessage, ...]:
    """The messages as the engine takes them.  Roles alternate, user first; a
    ``system`` turn in the middle joins the system prompt (templates accept one,
    at the start)."""
    if req.mcp_servers:
        raise _refuse("`mcp_servers`", "mcp_servers")
    system = [req.system_text() or ""]
    turns: list[ChatMessage] = []
    previous = "assistant"
    for i, message in enumerate(req.messages):
        if message.role == "system":
            system.append(_text_of(message.content, f"messages.{i}.content"))  # type: ignore[arg-type]
            continue
        if message.role == previous:
            raise InvalidRequest(
                "messages: roles must alternate between user and assistant, starting with "
                f"user (messages.{i}.role)",
                param=f"messages.{i}.role",
            )
        previous = message.role
        turns.extend(_turns(i, message))
    head = "\n\n".join(part for part in system if part)
    return ((ChatMessage("system", head),) if head else ()) + tuple(turns)


def _tools(req: CountTokensRequest) -> tuple[ToolSpec, ...]:
    tools = []
    names: set[str] = set()
    for i, tool in enumerate(req.tools or ()):
        if tool.type not in (None, "custom"):
            raise _refuse(f"The server tool `{tool.type}`", f"tools.{i}.type")
        if tool.name in names:
            raise InvalidRequest(f"Two tools are named {tool.name}.", param=f"tools.{i}.name")
        names.add(tool.name)
        schema = json_text(tool.input_schema or EMPTY_SCHEMA, f"tools.{i}.input_schema")
        tools.append(ToolSpec(tool.name, tool.description, schema))
    return tuple(tools)


def reasoning_of(req: CountTokensRequest) -> bool | None:
    """``thinking`` onto the template's switch: enabled or adaptive is on; disabled,
    or no ``thinking`` at all (Anthropic's default), is off."""
    if isinstance(req.thinking, ThinkingEnabled | ThinkingAdaptive):
        return True
    if isinstance(req.thinking, ThinkingDisabled) or req.thinking is None:
        return False
    return None


def thinking_omitted(req: CountTokensRequest) -> bool:
    return isinstance(req.thinking, ThinkingEnabled | ThinkingAdaptive) and (
        req.thinking.display == "omitted"
    )


def output_of(req: CountTokensRequest) -> OutputSpec:
    tools = _tools(req)
    choice = req.tool_choice
    if choice is not None and not isinstance(choice, ToolChoiceNone) and not tools:
        raise InvalidRequest("`tool_choice` needs `tools`.", param="tool_choice")
    if isinstance(choice, ToolChoiceNone):
        return OutputSpec(reasoning=reasoning_of(req))
    constraint = None
    if isinstance(choice, ToolChoiceTool):
        if choice.name not in {t.name for t in tools}:
            raise InvalidRequest(
                f"`tool_choice` names {choice.name}, which is not in `tools`.",
                param="tool_choice.name",
            )
        constraint = Constraint("tool_call", tools=(choice.name,))
    elif isinstance(choice, ToolChoiceAny):
        parallel = not choice.disable_parallel_tool_use and len(tools) > 1
        constraint = Constraint("tool_call", tools=tuple(t.name for t in tools), parallel=parallel)
    reasoning = False if constraint is not None else reasoning_of(req)
    return OutputSpec(
        tools=tools, parse_tools=bool(tools), constraint=constraint, reasoning=reasoning
    )


def signature(thinking: str) -> str:
    """An opaque signature for a thinking block (clients send it back; it is ignored)."""
    return "mlxgw-" + hashlib.sha256(thinking.encode()).hexdigest()[:32]


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")
