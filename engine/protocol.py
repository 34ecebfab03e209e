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


class ChatMessage(msgspec.Struct, frozen=True):
    role: str
    content: str


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


# --- gateway -> worker -------------------------------------------------------


class Load(msgspec.Struct, tag=True, frozen=True):
    model_id: str
    model_dir: str
    prompt_cache_size: int = 8


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


class Delta(msgspec.Struct, tag=True, frozen=True):
    """New text; ``completion_tokens`` is the running count of generated tokens."""

    req_id: int
    text: str
    completion_tokens: int


FinishReason = Literal["stop", "length", "cancelled"]


class Finished(msgspec.Struct, tag=True, frozen=True):
    req_id: int
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    text: str = ""
    stop_sequence: str | None = None  # the stop string that ended it, if one did


FailureCode = Literal["context_length_exceeded", "invalid_request", "internal"]


class Failed(msgspec.Struct, tag=True, frozen=True):
    req_id: int
    code: FailureCode
    message: str


FromWorker = Loaded | LoadFailed | LoadProgress | Started | Delta | Finished | Failed

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
