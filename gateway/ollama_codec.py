"""Ollama requests into the engine's terms, and the engine's output into Ollama's.

Decoding: ``options`` into ``SamplingParams`` (with Ollama's own defaults, so a
client that sends none gets what it would get from Ollama); messages, tool calls
and tool results into ``ChatMessage``; ``tools``, ``format`` and ``think`` into
an ``OutputSpec``; ``keep_alive`` (seconds or a Go duration) into seconds; the
``name:tag`` a client sends into a catalogue id.  Encoding: the stream's NDJSON
objects with real durations in nanoseconds.  Nothing here checks a key or a
model: that is ``gateway.pipeline``'s.  ``docs/api.md`` lists the differences
from Ollama.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.protocol import ChatMessage, OutputSpec, SamplingParams, ToolCall, ToolSpec
from gateway.errors import InvalidRequest
from gateway.generation import Choice
from gateway.ollama_schema import (
    ChatRequest,
    GenerateRequest,
    GenerationFields,
    MessageIn,
    Options,
    ToolIn,
)
from gateway.openai_codec import json_constraint, json_text, output_spec, tool_specs
from gateway.settings import EngineSettings

# Ollama's defaults for the options a request leaves out.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 40
DEFAULT_REPEAT_PENALTY = 1.1
DEFAULT_REPEAT_LAST_N = 64
LATEST = ":latest"
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<unit>ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def model_id_of(name: str) -> str:
    """The catalogue name an Ollama client's ``name:tag`` means: ``:latest`` is the
    model itself (another tag is part of the name, as a catalogue id may be)."""
    return name[: -len(LATEST)] if name.endswith(LATEST) and len(name) > len(LATEST) else name


def tagged(model_id: str) -> str:
    """The name Ollama clients list a model under: its id, with ``:latest`` unless
    the id already carries a tag."""
    return model_id if ":" in model_id.rsplit("/", 1)[-1] else model_id + LATEST


def keep_alive_seconds(value: float | str | None) -> float | None:
    """Seconds from Ollama's ``keep_alive``: a number of seconds or a Go duration
    (``"5m"``, ``"1h30m"``, ``"-1"``); negative means forever.  400 when malformed."""
    if value is None:
        return None
    malformed = InvalidRequest(
        f'keep_alive must be seconds or a duration such as "5m" or "1h30m"; got {value!r:.40}.',
        param="keep_alive",
    )
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise malformed
        return -1.0 if value < 0 else float(value)
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if _NUMBER.fullmatch(body):
        seconds = float(body)  # a bare number is seconds
    else:
        parts = list(_DURATION.finditer(body))
        if not body or "".join(p.group(0) for p in parts) != body:
            raise malformed
        seconds = sum(float(p.group("number")) * _UNITS[p.group("unit")] for p in parts)
    return -1.0 if sign < 0 and seconds > 0 else seconds


def sampling_params(options: Options | None, limits: EngineSettings) -> SamplingParams:
    """The engine's sampling parameters; an unset option takes Ollama's default."""
    o = options or Options()
    field = o.unsupported()
    if field:
        raise InvalidRequest(f"`options.{field}` is not supported by this gateway.", param=field)
    if o.num_predict is None or o.num_predict <= 0:  # Ollama: until the context is full
        max_tokens = limits.max_tokens_limit
    else:
        max_tokens = min(o.num_predict, limits.max_tokens_limit)
    last_n = DEFAULT_REPEAT_LAST_N if o.repeat_last_n is None else o.repeat_last_n
    if last_n < 0:  # -1: all of them (the penalty sees generated tokens, at most this many)
        last_n = limits.max_tokens_limit
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=DEFAULT_TEMPERATURE if o.temperature is None else o.temperature,
        top_p=DEFAULT_TOP_P if o.top_p is None else o.top_p,
        top_k=DEFAULT_TOP_K if o.top_k is None else o.top_k,
        seed=None if o.seed is None or o.seed < 0 else o.seed,  # Ollama: -1 is random
        stop=o.stops(),
        presence_penalty=o.presence_penalty or 0.0,
        frequency_penalty=o.frequency_penalty or 0.0,
        repetition_penalty=DEFAULT_REPEAT_PENALTY if o.repeat_penalty is None else o.repeat_penalty,
        repetition_context_size=last_n,
    )


def _refuse_images(images: list[str] | None, param: str) -> None:
    if images:
        raise InvalidRequest(
            "Images are not supported: the models served here read text only.", param=param
        )


def _call_id(i: int, j: int) -> str:
    return f"call_{i}_{j}"


def messages_of(req: ChatRequest) -> tuple[ChatMessage, ...]:
    """The conversation as the engine takes it.  A tool result names its call by
    ``tool_call_id`` or, as most Ollama clients do, by ``tool_name``: it answers the
    latest call of that name."""
    out: list[ChatMessage] = []
    calls_by_name: dict[str, str] = {}
    for i, m in enumerate(req.messages or ()):
        _refuse_images(m.images, f"messages.{i}.images")
        calls: tuple[ToolCall, ...] = ()
        if m.tool_calls:
            if m.role != "assistant":
                raise InvalidRequest(
                    "Only assistant messages may carry `tool_calls`.",
                    param=f"messages.{i}.tool_calls",
                )
            calls = tuple(
                ToolCall(
                    c.id or _call_id(i, j),
                    c.function.name,
                    json_text(c.function.arguments, f"messages.{i}.tool_calls.{j}"),
                )
                for j, c in enumerate(m.tool_calls)
            )
            calls_by_name.update({c.name: c.id for c in calls})
        out.append(_turn(m, calls, calls_by_name))
    return tuple(out)


def _turn(m: MessageIn, calls: tuple[ToolCall, ...], by_name: dict[str, str]) -> ChatMessage:
    if m.role != "tool":
        return ChatMessage(m.role, m.content, calls)
    call_id = m.tool_call_id or by_name.get(m.tool_name or "")
    return ChatMessage("tool", m.content, tool_call_id=call_id, name=m.tool_name)


def generate_messages(req: GenerateRequest) -> tuple[ChatMessage, ...]:
    """``/api/generate`` without ``raw``: the prompt as a user turn of the model's own
    chat template, ``system`` as its system turn."""
    system = (ChatMessage("system", req.system),) if req.system else ()
    return (*system, ChatMessage("user", req.prompt or ""))


def check_generate(req: GenerateRequest) -> None:
    """Refuse what ``/api/generate`` cannot honour, naming the field."""
    _refuse_images(req.images, "images")
    if req.suffix:
        raise InvalidRequest(
            "`suffix` (fill-in-the-middle) is not supported by this gateway.", param="suffix"
        )
    if req.template:
        raise InvalidRequest(
            "`template` is not supported: prompts are rendered with the model's own chat "
            "template; send `raw: true` with the whole prompt to write your own.",
            param="template",
        )
    if req.context:
        raise InvalidRequest(
            "`context` (an earlier answer's token ids) is not supported: send the "
            "conversation to /api/chat instead.",
            param="context",
        )
    if req.raw and req.system:
        raise InvalidRequest("`system` has no effect with `raw: true`.", param="system")


def _tools(tools: list[ToolIn] | None) -> tuple[ToolSpec, ...]:
    return tool_specs((tool.function for tool in tools or ()), "tools.{i}.function")


def reasoning_of(think: bool | str | None) -> bool | None:
    """``think`` onto the template's thinking switch (a level means on)."""
    if think is None:
        return None
    return think if isinstance(think, bool) else True


def output_of(req: GenerationFields, tools: list[ToolIn] | None = None) -> OutputSpec:
    """What the request asks of the output: tools, a JSON ``format``, thinking."""
    fmt = req.format
    json_format = None
    if fmt == "json":
        json_format = json_constraint("json_object", None, "format")
    elif isinstance(fmt, dict):
        json_format = json_constraint("json_schema", fmt, "format")
    return output_spec(
        _tools(tools),
        None,
        None,
        json_format,
        reasoning_of(req.think),
        format_param="format",
    )


def logprobs_of(req: GenerationFields) -> int | None:
    if req.top_logprobs and not req.logprobs:
        raise InvalidRequest("`top_logprobs` needs `logprobs: true`.", param="top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


# --- encoding ------------------------------------------------------------------------


def now_iso() -> str:
    """Ollama's ``created_at``: RFC 3339 UTC with microseconds."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Clock:
    """The durations of one request, in Ollama's terms: ``load`` until the model began
    on it (tokenizing, waiting for a slot, a load), ``prompt_eval`` until its first
    token, ``eval`` the rest.  Monotonic seconds; reported in nanoseconds."""

    arrived: float
    opened: float | None = None
    first_token: float | None = None
    finished: float | None = None

    def open(self) -> None:
        self.opened = self.opened or time.monotonic()

    def token(self) -> None:
        self.first_token = self.first_token or time.monotonic()

    def finish(self) -> None:
        self.finished = time.monotonic()

    def durations(self, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        end = self.finished or time.monotonic()
        opened = self.opened or end
        first = self.first_token or end

        def ns(seconds: float) -> int:
            return max(0, int(seconds * 1e9))

        return {
            "total_duration": ns(end - self.arrived),
            "load_duration": ns(opened - self.arrived),
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": ns(first - opened),
            "eval_count": completion_tokens,
            "eval_duration": ns(end - first),
        }


def done_reason(finish_reason: str) -> str:
    return "length" if finish_reason == "length" else "stop"


def tool_calls_out(choice: Choice, first: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "function": {
                "index": first + i,
                "name": call.name,
                "arguments": json.loads(call.arguments or "{}"),
            },
        }
        for i, call in enumerate(choice.calls)
    ]


def error_text(tool_error: str) -> str:
    return f"({tool_error})"


def logprobs_out(choice: Choice) -> list[dict[str, Any]]:
    return [
        {
            "token": t.token,
            "logprob": t.logprob,
            "top_logprobs": [{"token": a.token, "logprob": a.logprob} for a in t.top],
        }
        for t in choice.logprobs
    ]
