"""The tool-call formats the engine parses: mlx-lm's parsers, and how each streams.

mlx-lm ships one parser per model family (``mlx_lm/tool_parsers/``), chosen
from the chat template; each takes the text between the format's start and end
markers and returns the calls.  Those parsers see a whole call; to stream, this
module says how the *inside* of a call grows, one of four ways:

``json``
    The body is ``{"name": ..., "arguments": {...}}`` (or a JSON array of such
    objects): the name is known when its string closes and the arguments are
    passed on as the model writes them (``json_tools``, and Mistral's list form).
``header``
    A header names the function, then the arguments follow as JSON (Mistral's
    ``name[ARGS]{...}``, Kimi K2's ``functions.name:0<|tool_call_argument_begin|>{...}``).
``params``
    XML-like: a header names the function and each parameter closes with a
    marker; after each closed parameter the parser runs on the closed prefix and
    the new ``"key": value`` pairs are passed on (Qwen3-Coder, GLM, MiniMax,
    MiniCPM, Muse Spark, Kimi K3, LongCat).
``whole``
    The name is known from a header; the arguments only when the call ends
    (pythonic, Gemma's).  A header inside one of the format's string literals
    (``quotes``: ``code="print(x)"``) is part of a value, not a call.

``FORCED`` is the engine's own format for constrained calls (``tool_choice``
"required" or a named function): no markers, the whole output is the JSON of
one call or of a list of calls.  ``FALLBACKS`` are formats a model without tool
support in its template may be given by its catalogue entry: the gateway then
renders the tools into the prompt itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from engine import mlx_lm_files

Streaming = Literal["json", "header", "params", "whole"]
FORCED = "forced"
FALLBACKS = ("json_tools",)


@dataclass(frozen=True)
class ToolFormat:
    name: str
    start: str  # the marker that opens a call (empty: the output is the call)
    end: str  # the marker that closes it (empty: the call runs to the end of output)
    parse: Callable[[str, Any], Any]  # mlx-lm's parse_tool_call(text, tools)
    streaming: Streaming
    header: re.Pattern[str] | None = None  # group 1: the function's name
    param_close: str = ""  # "params": closes one parameter
    call_close: str = ""  # "params": closes one call (added to parse a closed prefix)
    quotes: tuple[str, ...] = ()  # "whole": string delimiters (in "..." a backslash escapes)


_KIMI_K2 = r"(?:functions\.)?([^\s:<>|]+):\d+\s*<\|tool_call_argument_begin\|>\s*"
_HEADERS: dict[str, tuple[Streaming, str | None, str, str]] = {
    # name: (streaming, header regex, param_close, call_close)
    "json_tools": ("json", None, "", ""),
    "mistral": ("header", r"([\w-]+)\s*\[ARGS\]\s*", "", ""),
    "kimi_k2": (
        "header",
        _KIMI_K2,
        "",
        "",
    ),
    "qwen3_coder": ("params", r"<function=([^\s<>]+)>", "</parameter>", "</function>"),
    "glm47": ("params", r"^\s*([^\s<]+)\s*<arg_key>", "</arg_value>", ""),
    "laguna": ("params", r"^\s*([^\s<]+)\s*<arg_key>", "</arg_value>", ""),
    "longcat": ("params", r"^\s*([^\s<]+)\s*<longcat_arg_key>", "</longcat_arg_value>", ""),
    "minimax_m2": ("params", r'<invoke name="?([^">]+)"?>', "</parameter>", "</invoke>"),
    "minicpm5": ("params", r'^\s*"?([^\s"\'<>]+)"?\s*>', "</param>", "</function>"),
    "muse_spark": (
        "params",
        r'<atem:invoke\b[^>]*?\bname="([^"]+)">',
        "</atem:parameter>",
        "</atem:invoke>",
    ),
    "kimi_k3": (
        "params",
        r'<\|open\|>call[^<]*?tool="([^"]+)"[^<]*<\|sep\|>',
        "<|close|>argument<|sep|>",
        "<|close|>call<|sep|>",
    ),
    "pythonic": ("whole", r"([\w.]+)\(", "", ""),
    "function_gemma": ("whole", r"call:(\w+)\{", "", ""),
    "gemma4": ("whole", r"call:([\w-]+)\{", "", ""),
}

_QUOTES = {"pythonic": ('"', "'"), "function_gemma": ("<escape>",), "gemma4": ('<|"|>',)}

NAMES = tuple(_HEADERS)


def _parse_forced(text: str, tools: Any = None) -> Any:
    return json.loads(text)


def tool_format(name: str) -> ToolFormat:
    """The format ``name`` (an mlx-lm parser's name, or ``FORCED``)."""
    if name == FORCED:
        return ToolFormat(FORCED, "", "", _parse_forced, "json")
    if name not in _HEADERS:
        raise ValueError(f"unknown tool-call format {name!r}")
    streaming, header, param_close, call_close = _HEADERS[name]
    module = mlx_lm_files.module(f"tool_parsers.{name}")
    return ToolFormat(
        name,
        module.tool_call_start,
        module.tool_call_end,
        module.parse_tool_call,
        streaming,
        re.compile(header, re.DOTALL) if header else None,
        param_close,
        call_close,
        _QUOTES.get(name, ()),
    )


def format_of_tokenizer(hf_tokenizer: Any) -> str | None:
    """The parser mlx-lm chooses for this tokenizer (``None``: the template has none)."""
    named = getattr(hf_tokenizer, "init_kwargs", {}).get("tool_parser_type")
    if named:
        return str(named)
    inferred = mlx_lm_files.module("tokenizer_utils")._infer_tool_parser(hf_tokenizer)
    return None if inferred is None else str(inferred)
