"""How a conversation becomes prompt tokens: the model's chat template, or a plain
fallback.  No MLX here: the worker uses it to generate, and the gateway to count
and reserve tokens with the tokenizer alone, so both get the same tokens.

Tools and tool-carrying turns are rendered by the model's own template
(``tools=`` to ``apply_chat_template``) when the template supports tools (it
mentions them and mlx-lm has a parser for its format).  A model without that
may be given a fallback format by its catalogue entry (``tool_format``); the
tools are then described in the system turn in that format, and calls and
results are written into the turns as text.  Otherwise a request with tools, or
with tool turns, is refused (``ToolsNotSupported``).
"""

from __future__ import annotations

import json
from typing import Any

from engine.protocol import PLAIN_OUTPUT, ChatMessage, OutputSpec, ToolSpec
from engine.tool_formats import FALLBACKS, format_of_tokenizer


class ToolsNotSupported(ValueError):
    """The model's template cannot render tools and no fallback format is set."""


FALLBACK_SYSTEM = (
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def _template_source(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else ""


def native_tool_format(tokenizer: Any) -> str | None:
    """The tool-call format of the model's own template (``None``: it has none)."""
    if "tools" not in _template_source(tokenizer):
        return None
    return format_of_tokenizer(getattr(tokenizer, "_tokenizer", tokenizer))


def resolve_tool_format(tokenizer: Any, fallback: str | None) -> tuple[str, bool]:
    """The format tool calls are written in, and whether the template renders them."""
    native = native_tool_format(tokenizer)
    if native is not None:
        return native, True
    if fallback in FALLBACKS:
        assert fallback is not None
        return fallback, False
    raise ToolsNotSupported("its chat template has no tool support")


def has_reasoning_switch(tokenizer: Any) -> bool:
    return "enable_thinking" in _template_source(tokenizer)


def tool_dicts(tools: tuple[ToolSpec, ...]) -> list[dict[str, Any]]:
    """Tools as chat templates and mlx-lm's parsers expect them (OpenAI's shape)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": json.loads(t.parameters),
            },
        }
        for t in tools
    ]


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _native_message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": _arguments(c.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id or ""
        if m.name:
            out["name"] = m.name
    return out


def _fallback_messages(
    messages: tuple[ChatMessage, ...], tools: tuple[ToolSpec, ...]
) -> list[dict[str, Any]]:
    """Hermes-style text turns for a template that knows nothing of tools."""
    out: list[dict[str, Any]] = []
    for m in messages:
        content = m.content
        role = m.role
        if m.tool_calls:
            calls = [
                "<tool_call>\n"
                + json.dumps({"name": c.name, "arguments": _arguments(c.arguments)})
                + "\n</tool_call>"
                for c in m.tool_calls
            ]
            content = "\n".join([content, *calls] if content else calls)
        if role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": role, "content": content})
    if tools:
        described = "\n".join(json.dumps(t) for t in tool_dicts(tools))
        system = FALLBACK_SYSTEM.format(tools=described)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + system}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out


def uses_tools(messages: tuple[ChatMessage, ...], output: OutputSpec) -> bool:
    return bool(output.tools) or any(m.tool_calls or m.role == "tool" for m in messages)


def chat_text(
    tokenizer: Any, messages: tuple[ChatMessage, ...], output: OutputSpec = PLAIN_OUTPUT
) -> str | None:
    """The rendered prompt, or ``None`` when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        if uses_tools(messages, output):
            raise ToolsNotSupported("it has no chat template")
        return None
    kwargs: dict[str, Any] = {}
    if output.reasoning is not None and has_reasoning_switch(tokenizer):
        kwargs["enable_thinking"] = output.reasoning
    if uses_tools(messages, output):
        _, native = resolve_tool_format(tokenizer, output.tool_format)
        if native:
            plain = [_native_message(m) for m in messages]
            if output.tools:
                kwargs["tools"] = tool_dicts(output.tools)
        else:
            plain = _fallback_messages(messages, output.tools)
    else:
        plain = [{"role": m.role, "content": m.content} for m in messages]
    return str(
        tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False, **kwargs)
    )


def chat_tokens(
    tokenizer: Any, messages: tuple[ChatMessage, ...], output: OutputSpec = PLAIN_OUTPUT
) -> list[int]:
    """The prompt tokens of ``messages`` for ``tokenizer`` (a Hugging Face tokenizer
    or mlx-lm's wrapper of one), ready for the assistant's turn."""
    text = chat_text(tokenizer, messages, output)
    if text is not None:
        return list(tokenizer.encode(text, add_special_tokens=False))
    plain = [{"role": m.role, "content": m.content} for m in messages]
    joined = "".join(f"{m['role']}: {m['content']}\n" for m in plain) + "assistant: "
    return list(tokenizer.encode(joined))
