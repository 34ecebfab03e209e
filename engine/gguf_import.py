"""Convert a llama-family GGUF file into an MLX model directory ``mlx_lm.load`` accepts.

``mx.load`` reads GGUF natively: Q4_0/Q4_1/Q8_0 tensors arrive as MLX affine-quantized
triples (``.weight`` uint32, ``.scales``/``.biases`` float16, group size 32), so the
weights stay quantized with no re-quantization.  We rename them to mlx-lm's llama
layout, derive ``config.json`` from the ``llama.*`` metadata, rebuild the tokenizer
(:mod:`engine.gguf_tokenizer`), and move the finished directory into place atomically.

    python -m engine.gguf_import FILE.gguf OUT_DIR [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from engine.gguf_tokenizer import TokenizerImportError, write_tokenizer_files

GROUP_SIZE = 32  # every GGUF block type MLX reads packs 32 weights per scale
SUPPORTED_TYPES = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"}
GGML_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0"}
GGML_TYPES |= {9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}
GGML_TYPES |= {15: "Q8_K", 30: "BF16"}
# Byte sizes of GGUF metadata scalar value types (8 is string, 9 is array).
VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
PER_LAYER = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
SUFFIXES = {"weight", "scales", "biases", "bias"}


class GGUFImportError(ValueError):
    """The GGUF cannot be imported: unsupported, malformed, or the target is taken."""


def read_tensor_types(path: Path) -> dict[str, str]:
    """Each tensor's GGML type name, from the GGUF header (no tensor data is read)."""
    with path.open("rb") as f:

        def unpack(fmt: str) -> tuple[Any, ...]:
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))

        def skip(value_type: int) -> None:
            if value_type == 8:
                f.seek(unpack("Q")[0], os.SEEK_CUR)
            elif value_type == 9:
                item_type, count = unpack("IQ")
                if item_type in VALUE_SIZES:
                    f.seek(VALUE_SIZES[item_type] * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(item_type)
            else:
                f.seek(VALUE_SIZES[value_type], os.SEEK_CUR)

        try:
            if f.read(4) != b"GGUF" or unpack("I")[0] < 2:
                raise GGUFImportError(f"{path} is not a GGUF (version 2 or later) file")
            n_tensors, n_kv = unpack("QQ")
            for _ in range(n_kv):
                f.seek(unpack("Q")[0], os.SEEK_CUR)  # the key
                skip(unpack("I")[0])
            types = {}
            for _ in range(n_tensors):
                name = f.read(unpack("Q")[0]).decode("utf-8")
                f.seek(8 * unpack("I")[0], os.SEEK_CUR)  # the dimensions
                kind, _offset = unpack("IQ")
                types[name] = GGML_TYPES.get(kind, f"type {kind}")
        except (struct.error, KeyError, UnicodeDecodeError) as e:
            raise GGUFImportError(f"{path} has a malformed GGUF header") from e
    return types


def _check_tensor_types(path: Path) -> None:
    types = read_tensor_types(path)
    bad = {name: kind for name, kind in types.items() if kind not in SUPPORTED_TYPES}
    if bad:
        example = next(iter(bad))
        kinds = ", ".join(sorted(set(bad.values())))
        raise GGUFImportError(
            f"{path.name} uses tensor types MLX cannot load: {kinds} "
            f"(e.g. {example} is {bad[example]}); supported: {', '.join(sorted(SUPPORTED_TYPES))}. "
            "Use a Q8_0/Q4_0/Q4_1/F16 GGUF, or convert the original weights with mlx_lm.convert."
        )


def _plain(value: Any) -> Any:
    """A metadata value as plain Python (``mx.load`` gives scalars and arrays as mx.array)."""
    if isinstance(value, mx.array):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def _short_float(value: float) -> float:
    """A float32 metadata value without float32 noise (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def _require(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise GGUFImportError(f"GGUF metadata lacks {key!r}")
    return meta[key]


def _hf_name(name: str) -> str:
    """The mlx-lm llama parameter name for GGUF tensor ``name`` (``blk.3.attn_q.scales``...)."""
    stem, _, suffix = name.rpartition(".")
    layer = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if suffix in SUFFIXES and stem in TOP_LEVEL:
        return f"{TOP_LEVEL[stem]}.{suffix}"
    if suffix in SUFFIXES and layer and layer[2] in PER_LAYER:
        return f"model.layers.{layer[1]}.{PER_LAYER[layer[2]]}.{suffix}"
    raise GGUFImportError(f"unexpected tensor {name!r} for a llama model")


def _rope_scaling(meta: dict[str, Any], rope_freqs: mx.array | None, head_dim: int) -> Any:
    """``rope_scaling`` for config.json, or None."""
    if rope_freqs is not None:
        # Llama 3.1+ stores its llama3 rope factors as a tensor; mlx-lm computes them from
        # rope_scaling, so recover the parameters llama.cpp's converter used and check them.
        factors = np.array(rope_freqs.astype(mx.float32))
        scaling = {"rope_type": "llama3", "factor": _short_float(factors.max())}
        scaling |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
        scaling["original_max_position_embeddings"] = 8192
        base = meta.get("llama.rope.freq_base", 10000.0)
        wavelen = 2 * np.pi * base ** (np.arange(0, head_dim, 2) / head_dim)
        factor, old = scaling["factor"], 8192
        smooth = (old / wavelen - 1.0) / (4.0 - 1.0)
        expect = np.where(wavelen < old / 4.0, 1.0, 1 / ((1 - smooth) / factor + smooth))
        expect = np.where(wavelen > old, factor, expect)
        if expect.shape != factors.shape or not np.allclose(expect, factors, rtol=1e-3):
            raise GGUFImportError("rope_freqs does not match llama3 rope scaling (8192, 1, 4)")
        return scaling
    kind = meta.get("llama.rope.scaling.type", "none")
    factor = meta.get("llama.rope.scaling.factor")
    if kind == "none" or not factor or factor == 1.0:
        return None
    if kind == "linear":
        return {"type": "linear", "factor": _short_float(factor)}
    if kind == "yarn":
        original = _require(meta, "llama.rope.scaling.original_context_length")
        return {"type": "yarn", "factor": factor, "original_max_position_embeddings": original}
    raise GGUFImportError(f"unsupported llama.rope.scaling.type {kind!r}")


def _quantization(weights: dict[str, mx.array]) -> dict[str, Any] | None:
    """mlx-lm's ``quantization`` config: the commonest bits plus per-module overrides."""
    bits = {}
    for name, scales in weights.items():
        if name.endswith(".scales"):
            module = name.removesuffix(".scales")
            in_features = scales.shape[-1] * GROUP_SIZE
            bits[module] = weights[f"{module}.weight"].shape[-1] * 32 // in_features
    if not bits:
        return None
    default = Counter(bits.values()).most_common(1)[0][0]
    config: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default}
    # mlx-lm's load_model looks each module path up in this dict before the defaults.
    for module, b in sorted(bits.items()):
        if b != default:
            config[module] = {"group_size": GROUP_SIZE, "bits": b}
    return config


def _float_dtype(name: str | None, quantized: bool, embed_dtype: mx.Dtype) -> mx.Dtype:
    """The one float dtype of the converted model (norms, scales and biases included)."""
    if name is not None:
        return {"float16": mx.float16, "float32": mx.float32}[name]
    if mx.default_device() == mx.cpu:
        # MLX's CPU backend runs float16 (quantized) matmuls ~40x slower than float32, and
        # SmolLM2 in float16 there answers gibberish: convert for the machine that serves.
        return mx.float32
    # As mlx_lm.convert writes: float16 beside quantized weights, F32 files stay F32.
    return mx.float16 if quantized or embed_dtype != mx.float32 else mx.float32


def _convert(
    gguf_path: Path, dtype_name: str | None
) -> tuple[dict[str, mx.array], dict[str, Any], dict[str, Any]]:
    """(mlx-lm weights, config.json, plain metadata) for the GGUF at ``gguf_path``."""
    _check_tensor_types(gguf_path)
    try:
        tensors, raw_meta = mx.load(str(gguf_path), return_metadata=True)
    except (RuntimeError, ValueError) as e:
        raise GGUFImportError(f"MLX could not read {gguf_path}: {e}") from e
    meta = {key: _plain(value) for key, value in raw_meta.items()}
    arch = _require(meta, "general.architecture")
    if arch != "llama":
        raise GGUFImportError(f"unsupported architecture {arch!r}; only 'llama' is supported")
    if meta.get("llama.expert_count", 0):
        raise GGUFImportError("mixture-of-experts llama GGUFs (e.g. Mixtral) are not supported")

    hidden = _require(meta, "llama.embedding_length")
    heads = _require(meta, "llama.attention.head_count")
    head_dim = meta.get("llama.attention.key_length", hidden // heads)
    if meta.get("llama.attention.value_length", head_dim) != head_dim:
        raise GGUFImportError("key_length != value_length is not supported by mlx-lm's llama")
    if meta.get("llama.rope.dimension_count", head_dim) != head_dim:
        raise GGUFImportError("partial rotary embeddings are not supported by mlx-lm's llama")
    rope_freqs = tensors.pop("rope_freqs.weight", None)

    embed = tensors.get("token_embd.weight")
    if embed is None:
        raise GGUFImportError("GGUF has no token_embd.weight tensor")
    quantized = any(name.endswith(".scales") for name in tensors)
    dtype = _float_dtype(dtype_name, quantized, embed.dtype)
    weights = {
        _hf_name(name): value.astype(dtype) if mx.issubdtype(value.dtype, mx.floating) else value
        for name, value in tensors.items()
    }
    tied = "lm_head.weight" not in weights
    eos_ids = [
        meta[f"tokenizer.ggml.{key}_token_id"]
        for key in ("eos", "eot", "eom")
        if meta.get(f"tokenizer.ggml.{key}_token_id") is not None
    ]
    eos_ids = list(dict.fromkeys(eos_ids))
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": _require(meta, "llama.feed_forward_length"),
        "num_attention_heads": heads,
        "num_hidden_layers": _require(meta, "llama.block_count"),
        "num_key_value_heads": meta.get("llama.attention.head_count_kv", heads),
        "rms_norm_eps": _short_float(_require(meta, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": _short_float(meta.get("llama.rope.freq_base", 10000.0)),
        # The embedding's rows are the truth; llama.vocab_size is optional in GGUF.
        "vocab_size": embed.shape[0],
        "max_position_embeddings": _require(meta, "llama.context_length"),
        "tie_word_embeddings": tied,
        # llama.cpp permutes Q/K rows for its interleaved rope; keep them and say so.
        "rope_traditional": True,
        "attention_bias": any(".self_attn." in n and n.endswith(".bias") for n in weights),
        "mlp_bias": any(".mlp." in n and n.endswith(".bias") for n in weights),
    }
    if "llama.attention.key_length" in meta:
        config["head_dim"] = head_dim
    if (scaling := _rope_scaling(meta, rope_freqs, head_dim)) is not None:
        config["rope_scaling"] = scaling
    if meta.get("tokenizer.ggml.bos_token_id") is not None:
        config["bos_token_id"] = meta["tokenizer.ggml.bos_token_id"]
    if eos_ids:
        config["eos_token_id"] = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if (quantization := _quantization(weights)) is not None:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    layers = {int(m[1]) for n in weights if (m := re.match(r"model\.layers\.(\d+)\.", n))}
    if layers != set(range(config["num_hidden_layers"])):
        raise GGUFImportError("the blk.N tensors do not match llama.block_count")
    return weights, config, meta


def import_gguf(
    gguf_path: Path, out_dir: Path, *, name: str | None = None, dtype: str | None = None
) -> Path:
    """Convert ``gguf_path`` into an MLX model directory at ``out_dir``; returns ``out_dir``.

    ``name`` is recorded in config.json as ``_name_or_path``.  ``dtype`` ("float16" or
    "float32") is the float dtype to write; by default float32 when MLX runs on the CPU,
    else float16 beside quantized weights.  ``out_dir`` must not exist or be empty.  The directory is built next to it as
    ``.<name>.partial-<random>`` and renamed into place only when complete.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise GGUFImportError(f"{out_dir} already exists and is not an empty directory")
    if not gguf_path.is_file():
        raise GGUFImportError(f"{gguf_path} is not a file")
    if dtype not in (None, "float16", "float32"):
        raise GGUFImportError(f"dtype must be float16 or float32, not {dtype!r}")
    weights, config, meta = _convert(gguf_path, dtype)
    config["gguf_source"] = {"file": gguf_path.name, "name": meta.get("general.name")}
    if name:
        config["_name_or_path"] = name

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.parent / f".{out_dir.name}.partial-{secrets.token_hex(4)}"
    partial.mkdir()
    try:
        try:
            write_tokenizer_files(meta, partial, max_length=config["max_position_embeddings"])
        except TokenizerImportError as e:
            raise GGUFImportError(f"cannot rebuild the tokenizer: {e}") from e
        mx.save_safetensors(str(partial / "model.safetensors"), weights, metadata={"format": "mlx"})
        (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        try:
            os.replace(partial, out_dir)
        except OSError as e:
            raise GGUFImportError(f"cannot move the model into {out_dir}: {e}") from e
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m engine.gguf_import FILE.gguf OUT_DIR [--name NAME]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path, help="the .gguf file")
    parser.add_argument("out_dir", type=Path, help="the MLX model directory to create")
    parser.add_argument("--name", help="the model's name, recorded in config.json")
    parser.add_argument("--dtype", choices=["float16", "float32"], help="float dtype to write")
    args = parser.parse_args(argv)
    try:
        import_gguf(args.gguf, args.out_dir, name=args.name, dtype=args.dtype)
    except GGUFImportError as e:
        print(f"gguf_import: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
