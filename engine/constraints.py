"""Output constraints as llguidance grammars (no MLX: the gateway validates with it).

``grammar_of`` turns a ``Constraint`` into the grammar text llguidance compiles;
``problem`` says what in it the engine cannot enforce (``None``: nothing), so a
request is refused with that message before anything runs.  JSON is generated
without free whitespace (``", "`` and ``": "`` between items and keys): free
whitespace lets a small model pad an answer with blank lines until
``max_tokens``.  A forced tool call is one ``{"name": ..., "arguments": ...}``
object whose ``name`` is one of the allowed tools and whose ``arguments`` are
valid against that tool's parameters; ``parallel`` allows a JSON array of one
or more such calls.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance

from engine.protocol import Constraint, ToolSpec

JSON_OPTIONS: Any = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
MAX_GRAMMAR_BYTES = 256 * 1024


class UnsupportedConstraint(ValueError):
    """The constraint uses something the engine cannot enforce (the message names it)."""


def _call_schema(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": json.loads(tool.parameters)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def schema_of(constraint: Constraint, tools: tuple[ToolSpec, ...]) -> dict[str, Any]:
    """The JSON schema the output must satisfy."""
    if constraint.kind == "json_object":
        return {"type": "object"}
    if constraint.kind == "json_schema":
        schema = json.loads(constraint.schema)
        if not isinstance(schema, dict):
            raise UnsupportedConstraint("the schema must be a JSON object")
        return schema
    by_name = {tool.name: tool for tool in tools}
    missing = [name for name in constraint.tools if name not in by_name]
    if missing or not constraint.tools:
        raise UnsupportedConstraint(f"no tool named {missing[0] if missing else '(none)'}")
    calls = [_call_schema(by_name[name]) for name in constraint.tools]
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if constraint.parallel:
        return {"type": "array", "items": one, "minItems": 1}
    return one


def grammar_of(constraint: Constraint, tools: tuple[ToolSpec, ...] = ()) -> str:
    """The llguidance grammar of ``constraint``; raises ``UnsupportedConstraint``."""
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(
            schema_of(constraint, tools), overrides=JSON_OPTIONS
        )
    except (ValueError, TypeError) as exc:
        raise UnsupportedConstraint(str(exc)) from exc


def problem(constraint: Constraint, tools: tuple[ToolSpec, ...] = ()) -> str | None:
    """Why the engine cannot enforce ``constraint`` (``None``: it can)."""
    try:
        grammar = grammar_of(constraint, tools)
    except UnsupportedConstraint as exc:
        return str(exc)
    if len(grammar) > MAX_GRAMMAR_BYTES:
        return f"the schema is larger than {MAX_GRAMMAR_BYTES // 1024} KiB once compiled"
    message = llguidance.LLMatcher.validate_grammar(grammar)
    return message or None
