"""The framed protocol between the gateway and a worker process.

Each frame is a 4-byte big-endian length followed by one msgpack-encoded
message.  Messages are tagged msgspec structs, so both sides decode into the
exact type and a malformed frame is an error, never a guess.

Gateway -> worker: ``Load``, ``Generate``, ``Cancel``, ``Shutdown``.
Worker -> gateway: ``LoadProgress``, ``Loaded``, ``LoadFailed``, ``Started``,
``Delta``, ``Finished``, ``Failed``.

The protocol carries plain data only; it is imported by both the gateway side
(``engine.worker``) and the worker (``engine.worker_main``) and imports no MLX.
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 64 * 1024 * 1024


class ToolCall(msgspec.Struct, frozen=True):
    """A call the assistant made: ``arguments`` is the JSON text of an object."""

    id: str
    name: str
    arguments: str


class ChatMessage(msgspec.Struct, frozen=True):
    """One turn.  ``role`` is system, user, assistant or tool; an assistant turn may
    carry ``tool_calls``; a tool turn answers the call ``tool_call_id`` (``name``: the
    tool's name, where the client gave it)."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


class ToolSpec(msgspec.Struct, frozen=True):
    """A function the model may call; ``parameters`` is its JSON schema, as JSON text."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object", "properties": {}}'


ConstraintKind = Literal["json_schema", "json_object", "tool_call"]


class Constraint(msgspec.Struct, frozen=True):
    """What the output must be, enforced token by token.

    ``json_schema``: one JSON value valid against ``schema`` (JSON text);
    ``json_object``: any JSON object; ``tool_call``: a call to one of ``tools``
    (names of ``OutputSpec.tools``), written as ``{"name": ..., "arguments": ...}``
    with arguments valid against that tool's parameters, or, when ``parallel``, a
    JSON array of one or more such calls.
    """

    kind: ConstraintKind
    schema: str = ""
    tools: tuple[str, ...] = ()
    parallel: bool = False


class OutputSpec(msgspec.Struct, frozen=True):
    """How the prompt is rendered and the output split, free of any wire format.

    ``tools`` are rendered into the prompt by the chat template (or ``tool_format``'s
    fallback rendering) and given to the parser; ``parse_tools`` splits tool calls
    out of the text with the parser of ``tool_format`` (``None``: the one the
    model's tokenizer names); ``reasoning`` turns the template's thinking switch on
    or off (``None``: the model's default).
    """

    tools: tuple[ToolSpec, ...] = ()
    tool_format: str | None = None
    parse_tools: bool = False
    constraint: Constraint | None = None
    reasoning: bool | None = None


PLAIN_OUTPUT = OutputSpec()


class SamplingParams(msgspec.Struct, frozen=True):
    """How to pick tokens: the engine's own, wire-format-free description."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = {}
    top_k: int = 0
    logprobs: int | None = None  # None: none; else the top alternatives per token (0-20)
    repetition_penalty: float = 0.0  # multiplicative, on recently seen tokens; 0 or 1: off
    repetition_context_size: int = 20  # how many of the most recent tokens it looks at; 0: off


# --- gateway -> worker -------------------------------------------------------


Decoding = Literal["auto", "batched", "interleaved"]


class Load(msgspec.Struct, tag=True, frozen=True):
    """Load a model.  ``decoding`` says how concurrent generations decode (``auto``:
    measured at load); ``kv_budget_tokens`` bounds the KV cache of all running
    generations together (0: no bound beyond the gateway's own)."""

    model_id: str
    model_dir: str
    prompt_cache_size: int = 8
    decoding: Decoding = "auto"
    kv_budget_tokens: int = 0


class Generate(msgspec.Struct, tag=True, frozen=True):
    """One generation.  Exactly one of ``messages`` (chat) or ``prompt`` is set.

    ``tokens``, when set, is the prompt already tokenized by the gateway (the worker
    then skips tokenizing).  ``partition`` names the prompt-cache partition the
    request may read and write: requests of different partitions never share a
    cached prefix.
    """

    req_id: int
    params: SamplingParams
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    tokens: tuple[int, ...] | None = None
    partition: str = ""
    output: OutputSpec = OutputSpec()
    caller: str = ""  # opaque: callers take turns at prefill slices


class Cancel(msgspec.Struct, tag=True, frozen=True):
    req_id: int


class Shutdown(msgspec.Struct, tag=True, frozen=True):
    pass


ToWorker = Load | Generate | Cancel | Shutdown


# --- worker -> gateway -------------------------------------------------------


class Loaded(msgspec.Struct, tag=True, frozen=True):
    model_id: str
    load_seconds: float
    memory_bytes: int
    context_length: int
    decoding: str = "interleaved"  # "batched" or "interleaved"
    decoding_reason: str = ""
    kv_bytes_per_token: int = 0


class WorkerStats(msgspec.Struct, tag=True, frozen=True):
    """How a worker's model is serving: sent when generations join or leave, and
    about once a second while any run."""

    batch: int  # generations decoding
    prefilling: int  # generations whose prompt is being fed in
    waiting: int  # generations waiting for KV budget
    kv_reserved_tokens: int
    kv_used_bytes: int
    longest_pause: float  # seconds between two tokens of a running stream, last minute


class LoadFailed(msgspec.Struct, tag=True, frozen=True):
    message: str


class LoadProgress(msgspec.Struct, tag=True, frozen=True):
    """Sent about once a second while loading: the worker's resident memory so far."""

    resident_bytes: int


class Started(msgspec.Struct, tag=True, frozen=True):
    """The prompt was tokenized; ``cached_tokens`` of it came from the prompt cache."""

    req_id: int
    prompt_tokens: int
    cached_tokens: int


class CallDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    """A piece of the ``index``-th tool call of a choice: its first piece has ``id``
    and ``name``; later ones append to its JSON ``arguments``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class TopLogprob(msgspec.Struct, frozen=True, array_like=True):
    token: str
    logprob: float


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True):
    """One generated token's log probability and its most likely alternatives."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


class Delta(msgspec.Struct, tag=True, frozen=True, omit_defaults=True):
    """New output; ``completion_tokens`` is the running count of generated tokens.
    ``text`` is the answer, ``reasoning`` the model's thinking, ``calls`` pieces of
    tool calls; ``logprobs`` covers the tokens generated since the last delta."""

    req_id: int
    text: str
    completion_tokens: int
    reasoning: str = ""
    calls: tuple[CallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]


class Finished(msgspec.Struct, tag=True, frozen=True, omit_defaults=True):
    """The end of a generation, with the output held back until then.  ``tool_error``
    says why tool markup could not be parsed (the call is then not reported)."""

    req_id: int
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    text: str = ""
    stop_sequence: str | None = None  # the stop string that ended it, if one did
    reasoning: str = ""
    calls: tuple[CallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    reasoning_tokens: int = 0
    tool_error: str | None = None


FailureCode = Literal["context_length_exceeded", "invalid_request", "internal"]


class Failed(msgspec.Struct, tag=True, frozen=True):
    req_id: int
    code: FailureCode
    message: str


FromWorker = Loaded | LoadFailed | LoadProgress | WorkerStats | Started | Delta | Finished | Failed

_encoder = msgspec.msgpack.Encoder()
to_worker_decoder = msgspec.msgpack.Decoder(ToWorker)
from_worker_decoder = msgspec.msgpack.Decoder(FromWorker)


def frame(message: ToWorker | FromWorker) -> bytes:
    """Encode one message as a length-prefixed frame."""
    body = _encoder.encode(message)
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """Decode a frame header, refusing absurd sizes (a desynchronised stream)."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return length
