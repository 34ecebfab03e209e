"""Ollama's wire format: request and response structs (msgspec).

Requests decode straight into these types, so a wrong type or an out-of-range
value is a 400 naming the field.  Ollama clients send fields the gateway has
no use for (hardware hints such as ``num_gpu`` or ``num_thread``): they are
ignored, as unknown fields are.  Options that would change the output and
cannot be honoured (``mirostat``, ``tfs_z``, ``typical_p``, ``min_p``) are
declared so that a request setting them away from their neutral value is
refused rather than silently ignored.  Responses are plain dicts built by
``gateway.ollama_codec`` (Ollama omits fields freely; clients tolerate that).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway.openai_schema import MAX_TOOLS, FunctionName, ModelName, Seed, Temperature, TopP

Penalty = Annotated[float, Meta(ge=-2, le=2)]
# A number of seconds (negative: forever) or a Go duration ("5m", "1h30m", "-1").
KeepAlive = float | Annotated[str, Meta(max_length=32)]
Images = Annotated[list[str], Meta(max_length=64)]


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """The model options Ollama accepts per request (``None``: Ollama's default)."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Meta(ge=0, le=1000)] | None = None
    num_predict: int | None = None  # <= 0: until the end of turn or the context is full
    stop: str | Annotated[list[str], Meta(max_length=16)] | None = None
    seed: Seed | None = None
    repeat_penalty: Annotated[float, Meta(gt=0, le=2)] | None = None
    repeat_last_n: Annotated[int, Meta(ge=-1, le=32768)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    num_ctx: Annotated[int, Meta(ge=1)] | None = None
    # Refused unless neutral: the engine's samplers do not implement them.
    min_p: float | None = None
    typical_p: float | None = None
    tfs_z: float | None = None
    mirostat: int | None = None

    def unsupported(self) -> str | None:
        """The first option set to a value the gateway cannot honour, if any."""
        neutral = {"min_p": 0.0, "typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0}
        for name, value in neutral.items():
            given = getattr(self, name)
            if given is not None and given != value:
                return name
        return None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class FunctionCallIn(msgspec.Struct, frozen=True):
    name: FunctionName
    arguments: dict[str, Any] = {}


class ToolCallIn(msgspec.Struct, frozen=True):
    function: FunctionCallIn
    id: Annotated[str, Meta(max_length=256)] | None = None


class MessageIn(msgspec.Struct, frozen=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: Images | None = None
    thinking: str | None = None  # earlier reasoning: templates drop it from the prompt
    tool_calls: Annotated[list[ToolCallIn], Meta(max_length=MAX_TOOLS)] | None = None
    tool_name: Annotated[str, Meta(max_length=256)] | None = None
    tool_call_id: Annotated[str, Meta(max_length=256)] | None = None


class FunctionDef(msgspec.Struct, frozen=True):
    name: FunctionName
    description: Annotated[str, Meta(max_length=16_384)] = ""
    parameters: dict[str, Any] | None = None


class ToolIn(msgspec.Struct, frozen=True):
    function: FunctionDef
    type: Literal["function"] = "function"


Format = Literal["", "json"] | dict[str, Any]
Think = bool | Literal["low", "medium", "high"]


class GenerationFields(msgspec.Struct, frozen=True, kw_only=True):
    """What ``/api/chat`` and ``/api/generate`` share."""

    model: ModelName
    stream: bool = True  # Ollama streams unless told not to
    options: Options | None = None
    format: Format | None = None
    keep_alive: KeepAlive | None = None
    think: Think | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None


class ChatRequest(GenerationFields, frozen=True, kw_only=True):
    messages: Annotated[list[MessageIn], Meta(max_length=100_000)] | None = None
    tools: Annotated[list[ToolIn], Meta(max_length=MAX_TOOLS)] | None = None


class GenerateRequest(GenerationFields, frozen=True, kw_only=True):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: Images | None = None


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``/api/show``, ``/api/pull`` and ``/api/delete``: a model by ``model`` (or by
    ``name``, which older clients send)."""

    model: ModelName | None = None
    name: ModelName | None = None
    stream: bool = True
    verbose: bool = False
    insecure: bool = False

    def model_name(self) -> str | None:
        return self.model or self.name
