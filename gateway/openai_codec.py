"""OpenAI requests into the engine's terms, and the engine's output into OpenAI's.

Decoding: sampling fields into ``SamplingParams``; messages (with tool calls and
tool results) into ``ChatMessage``; ``tools``, ``tool_choice``,
``parallel_tool_calls``, ``response_format``, ``reasoning_effort`` and
``logprobs`` into an ``OutputSpec``.  Encoding: tool calls, reasoning and
logprobs into OpenAI's message, delta and logprob shapes.  Nothing here checks
a key or a model: that is ``gateway.pipeline``'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

from engine.protocol import (
    ChatMessage,
    Constraint,
    OutputSpec,
    SamplingParams,
    TokenLogprob,
    ToolCall,
    ToolSpec,
)
from gateway.errors import InvalidRequest
from gateway.generation import Choice, Counts
from gateway.openai_schema import (
    ChatCompletionRequest,
    ChoiceError,
    ChoiceLogprobs,
    CompletionTokensDetails,
    FunctionCallOut,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    PromptTokensDetails,
    SamplingFields,
    TextLogprobs,
    TokenLogprobOut,
    ToolCallOut,
    TopLogprobOut,
    Usage,
)
from gateway.settings import EngineSettings

MAX_SCHEMA_BYTES = 64 * 1024
NO_REASONING = ("none", "minimal")


def sampling_params(
    req: SamplingFields, max_tokens: int | None, limits: EngineSettings
) -> SamplingParams:
    """The engine's sampling parameters from a validated request."""
    field = req.unsupported()
    if field:
        raise InvalidRequest(f"`{field}` is not supported by this gateway.", param=field)
    if req.n > limits.max_choices:
        raise InvalidRequest(f"`n` must be at most {limits.max_choices}.", param="n")
    if max_tokens is not None:
        max_tokens = min(max_tokens, limits.max_tokens_limit)  # a ceiling, as the context's
    bias: dict[int, float] = {}
    for key, value in (req.logit_bias or {}).items():
        # ASCII digits only ("²".isdigit() is true), and no id past any vocabulary.
        if not (key.isascii() and key.isdigit()) or len(key) > 9:
            raise InvalidRequest(
                "logit_bias keys must be token ids inside the model's vocabulary.",
                param="logit_bias",
            )
        bias[int(key)] = value
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    if top_p == 0:
        temperature = 0.0
    return SamplingParams(
        max_tokens=max_tokens or limits.default_max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=req.seed,
        stop=req.stops(),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=bias,
    )


def json_text(value: object, param: str) -> str:
    """A schema as JSON text, refused past ``MAX_SCHEMA_BYTES`` (every API's limit)."""
    text = json.dumps(value, ensure_ascii=False)
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(
            f"`{param}` is larger than {MAX_SCHEMA_BYTES // 1024} KiB.", param=param
        )
    return text


def messages_of(req: ChatCompletionRequest) -> tuple[ChatMessage, ...]:
    out = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        if m.tool_calls and m.role != "assistant":
            raise InvalidRequest(
                "Only assistant messages may carry `tool_calls`.",
                param=f"messages.[{i}].tool_calls",
            )
        if m.role == "tool" and not m.tool_call_id:
            raise InvalidRequest(
                "A tool message needs the `tool_call_id` it answers.",
                param=f"messages.[{i}].tool_call_id",
            )
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ()
        )
        out.append(ChatMessage(role, m.text(), calls, m.tool_call_id, m.name))
    return tuple(out)


class FunctionLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def parameters(self) -> dict[str, Any] | None: ...


def tool_specs(functions: Iterable[FunctionLike], path: str) -> tuple[ToolSpec, ...]:
    """Function tools as the engine takes them; ``path`` is how the API names the
    ``i``-th function in an error (``"tools.[{i}].function"``)."""
    tools = []
    names = set()
    for i, function in enumerate(functions):
        if function.name in names:
            raise InvalidRequest(
                f"Two tools are named {function.name}.", param=path.format(i=i) + ".name"
            )
        names.add(function.name)
        parameters = function.parameters or {"type": "object", "properties": {}}
        param = path.format(i=i) + ".parameters"
        tools.append(ToolSpec(function.name, function.description, json_text(parameters, param)))
    return tuple(tools)


def _tools(req: ChatCompletionRequest) -> tuple[ToolSpec, ...]:
    return tool_specs((tool.function for tool in req.tools or ()), "tools.[{i}].function")


def _reasoning(req: ChatCompletionRequest) -> bool | None:
    if (
        req.chat_template_kwargs is not None
        and req.chat_template_kwargs.enable_thinking is not None
    ):
        return req.chat_template_kwargs.enable_thinking
    if req.reasoning_effort is not None:
        return req.reasoning_effort not in NO_REASONING
    return None


def output_spec(
    tools: tuple[ToolSpec, ...],
    choice: str | None,
    parallel_calls: bool | None,
    json_format: Constraint | None,
    reasoning: bool | None,
    *,
    format_param: str,
) -> OutputSpec:
    """What a request asks of the output, for both OpenAI APIs: ``choice`` is
    ``none``/``auto``/``required``, a function's name, or ``None``."""
    if choice is not None and not tools:
        raise InvalidRequest("`tool_choice` needs `tools`.", param="tool_choice")
    constraint: Constraint | None = None
    parse = bool(tools) and choice != "none"
    if choice == "required":
        parallel = parallel_calls is not False and len(tools) > 1
        constraint = Constraint("tool_call", tools=tuple(t.name for t in tools), parallel=parallel)
    elif choice not in (None, "none", "auto"):
        if choice not in {t.name for t in tools}:
            raise InvalidRequest(
                f"`tool_choice` names {choice}, which is not in `tools`.", param="tool_choice"
            )
        constraint = Constraint("tool_call", tools=(choice,))
    if json_format is not None:
        if parse:
            unless = ' (unless `tool_choice` is "none")' if format_param != "format" else ""
            raise InvalidRequest(
                f"`{format_param}` cannot be combined with `tools`{unless}: the output is "
                "either a tool call or the JSON.",
                param=format_param,
            )
        constraint = json_format
    if reasoning is None and constraint is not None:
        reasoning = False  # a constraint leaves no room to think
    return OutputSpec(
        tools=tools if choice != "none" else (),
        parse_tools=parse,
        constraint=constraint,
        reasoning=reasoning,
    )


def json_constraint(kind: str, schema: dict[str, Any] | None, param: str) -> Constraint | None:
    if kind == "json_object":
        return Constraint("json_object")
    if kind == "json_schema":
        return Constraint("json_schema", schema=json_text(schema or {}, param))
    return None


def output_of(req: ChatCompletionRequest) -> OutputSpec:
    """What a chat request asks of the output: tools, a constraint, reasoning."""
    choice = req.tool_choice
    named = choice.function.name if isinstance(choice, NamedToolChoice) else choice
    fmt = req.response_format
    json_format = None
    if isinstance(fmt, JsonObjectFormat):
        json_format = json_constraint("json_object", None, "response_format")
    elif isinstance(fmt, JsonSchemaFormat):
        param = "response_format.json_schema.schema"
        json_format = json_constraint("json_schema", fmt.json_schema.schema, param)
    return output_spec(
        _tools(req),
        named,
        req.parallel_tool_calls,
        json_format,
        _reasoning(req),
        format_param="response_format",
    )


def logprobs_request(req: ChatCompletionRequest) -> int | None:
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("`top_logprobs` needs `logprobs: true`.", param="top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


# --- encoding ------------------------------------------------------------------------


def usage_of(counts: Counts) -> Usage:
    return Usage(
        counts.prompt_tokens,
        counts.completion_tokens,
        counts.prompt_tokens + counts.completion_tokens,
        PromptTokensDetails(counts.cached_tokens),
        CompletionTokensDetails(counts.reasoning_tokens),
    )


def finish_reason(reason: str, tool_error: str | None) -> str:
    if tool_error is not None and reason != "length":  # a cut-off call: `length` says why
        return "tool_call_error"
    return reason


def choice_error(tool_error: str | None) -> ChoiceError | None:
    return None if tool_error is None else ChoiceError(tool_error)


def tool_calls_out(choice: Choice) -> list[ToolCallOut] | None:
    if not choice.calls:
        return None
    return [ToolCallOut(c.id, FunctionCallOut(c.name, c.arguments)) for c in choice.calls]


def chat_logprobs(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        [
            TokenLogprobOut(
                t.token,
                t.logprob,
                list(t.token.encode()),
                [TopLogprobOut(a.token, a.logprob, list(a.token.encode())) for a in t.top],
            )
            for t in tokens
        ]
    )


def text_logprobs(
    tokens: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int, top: int
) -> TextLogprobs:
    """Legacy completions' logprobs; ``offset`` is where the first token's text starts."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return TextLogprobs(
        [t.token for t in tokens],
        [t.logprob for t in tokens],
        [{a.token: a.logprob for a in t.top} for t in tokens] if top else None,
        offsets,
    )
