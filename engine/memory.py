"""How much memory a model needs, estimated before it is loaded.

need = weights (summed from the safetensors headers: no tensor is read)
     + the KV budget: the KV cache of every generation that may run at once
       (``kv_budget`` tokens; by default ``sequences`` of the serving context)
     + a fixed per-worker overhead (interpreter, MLX runtime, buffers).

The estimate is deliberately simple and slightly pessimistic; the registry
also records what each worker really uses once loaded.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

GiB = 1024**3
DEFAULT_WORKER_OVERHEAD = 256 * 1024**2
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


class MemoryEstimateError(ValueError):
    """The model directory cannot be measured (missing or corrupt files)."""


@dataclass(frozen=True)
class MemoryNeed:
    weights: int
    kv_cache: int
    overhead: int
    context_length: int
    kv_tokens: int = 0  # the KV budget: tokens of all running generations together

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    @property
    def kv_bytes_per_token(self) -> int:
        return self.kv_cache // self.kv_tokens if self.kv_tokens else 0


def safetensors_header(path: Path) -> dict:
    """The JSON header of one safetensors file (tensor name -> dtype, shape, offsets)."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 * 1024**2:
                raise MemoryEstimateError(f"{path.name}: implausible header length {length}")
            return json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise MemoryEstimateError(f"{path.name}: not a readable safetensors file ({exc})") from exc


def safetensors_bytes(path: Path) -> int:
    """Bytes of tensor data in one safetensors file, from its header alone."""
    header = safetensors_header(path)
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        total += end - start
    return total


def weights_bytes(model_dir: Path) -> int:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise MemoryEstimateError(f"{model_dir.name}: no safetensors weights")
    return sum(safetensors_bytes(f) for f in files)


def kv_cache_bytes(config: dict, context_length: int) -> int:
    """K and V for every layer, for ``context_length`` tokens (of one or more sequences)."""
    text = config.get("text_config", config)
    layers = int(text.get("num_hidden_layers", 0))
    heads = int(text.get("num_attention_heads", 1))
    kv_heads = int(text.get("num_key_value_heads", heads))
    head_dim = int(text.get("head_dim") or text.get("hidden_size", 0) // max(heads, 1))
    element = _DTYPE_BYTES.get(str(text.get("torch_dtype", "float16")), 2)
    return 2 * layers * kv_heads * head_dim * context_length * element


def estimate(
    model_dir: Path,
    *,
    context_length: int | None = None,
    overhead: int = DEFAULT_WORKER_OVERHEAD,
    sequences: int = 1,
    kv_budget: int | None = None,
) -> MemoryNeed:
    """The memory ``model_dir`` needs when served with ``context_length`` tokens
    (default: the model's own maximum) and a KV budget of ``kv_budget`` tokens
    (default: ``sequences`` generations at that context)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise MemoryEstimateError(f"{model_dir.name}: unreadable config.json ({exc})") from exc
    return need_of(
        config,
        weights_bytes(model_dir),
        context_length=context_length,
        overhead=overhead,
        sequences=sequences,
        kv_budget=kv_budget,
    )


def need_of(
    config: dict,
    weights: int,
    *,
    context_length: int | None,
    overhead: int,
    sequences: int = 1,
    kv_budget: int | None = None,
) -> MemoryNeed:
    """The need of a model from its ``config.json`` and its weights' size: the same
    estimate for a model on disk and for a hub model before any weight is fetched."""
    try:
        text = config.get("text_config", config)
        model_max = int(
            text.get("max_position_embeddings") or config.get("max_position_embeddings") or 4096
        )
        context = min(context_length or model_max, model_max)
        kv_tokens = kv_budget or max(1, sequences) * context
        kv = kv_cache_bytes(config, kv_tokens)
    except (AttributeError, TypeError, ValueError) as exc:
        raise MemoryEstimateError(f"config.json is not a model configuration ({exc})") from exc
    return MemoryNeed(weights, kv, overhead, context, kv_tokens)


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
