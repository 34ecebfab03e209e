"""Convert a llama-family GGUF file into an MLX model directory ``mlx_lm.load`` accepts.

``mx.load`` reads GGUF natively: Q4_0/Q4_1/Q8_0 tensors arrive as MLX affine-quantized
triples (``.weight`` uint32, ``.scales``/``.biases``, group size 32), so the weights stay
quantized, bit for bit.  We rename them to mlx-lm's llama layout, derive ``config.json``
from the ``llama.*`` metadata, rebuild the tokenizer (:mod:`engine.gguf_tokenizer`), and
move the finished directory into place atomically.

    python -m engine.gguf_import FILE.gguf OUT_DIR [--name NAME] [--dtype float16|float32]
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
from typing import Any, cast

import mlx.core as mx
import numpy as np

from engine.gguf_tokenizer import TokenizerImportError, write_tokenizer_files

GROUP_SIZE = 32  # every GGUF block type MLX reads packs 32 weights per scale
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")
GGML_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0"}
GGML_TYPES |= {10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16"}
# Byte sizes of the GGUF metadata value types, but 8 (string) and 9 (array).
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
SUFFIXES = ("weight", "scales", "biases", "bias")


class GGUFImportError(ValueError):
    """The GGUF cannot be imported: unsupported, malformed, or the target is taken."""


def read_tensor_types(path: Path) -> dict[str, str]:
    """Each tensor's GGML type name, from the GGUF header (no tensor data is read)."""
    with path.open("rb") as f:

        def unpack(fmt: str) -> tuple[Any, ...]:
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))

        def skip(kind: int, count: int = 1) -> None:
            if kind in VALUE_SIZES:
                f.seek(VALUE_SIZES[kind] * count, os.SEEK_CUR)
            elif kind in (8, 9):  # a string: its length, then bytes; an array: type, count
                for _ in range(count):
                    f.seek(unpack("Q")[0], os.SEEK_CUR) if kind == 8 else skip(*unpack("IQ"))
            else:
                raise KeyError(kind)

        try:
            if f.read(4) != b"GGUF" or unpack("I")[0] < 2:
                raise GGUFImportError(f"{path} is not a GGUF file (version 2 or later)")
            n_tensors, n_kv = unpack("QQ")
            for _ in range(n_kv):
                f.seek(unpack("Q")[0], os.SEEK_CUR)  # the key
                skip(unpack("I")[0])
            types = {}
            for _ in range(n_tensors):
                name = f.read(unpack("Q")[0]).decode("utf-8")
                f.seek(8 * unpack("I")[0], os.SEEK_CUR)  # the dimensions
                kind = unpack("IQ")[0]
                types[name] = GGML_TYPES.get(kind, f"type {kind}")
        except (struct.error, KeyError, UnicodeDecodeError) as e:
            raise GGUFImportError(f"{path} has a malformed GGUF header") from e
    return types


def _check_tensor_types(path: Path) -> None:
    bad = {n: kind for n, kind in read_tensor_types(path).items() if kind not in SUPPORTED_TYPES}
    if bad:
        example = next(iter(bad))
        raise GGUFImportError(
            f"{path.name} uses tensor types MLX cannot load: {', '.join(sorted(set(bad.values())))}"
            f" (e.g. {example} is {bad[example]}); supported: {', '.join(SUPPORTED_TYPES)}. "
            "Use a Q8_0/Q4_0/Q4_1/F16 GGUF, or convert the original weights with mlx_lm.convert."
        )


def _plain(value: Any) -> Any:
    """A metadata value as plain Python (``mx.load`` gives numbers as mx.array)."""
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
        # Llama 3.1+ GGUFs carry their llama3 rope factors as a tensor, which mlx-lm does
        # not read: it recomputes them from rope_scaling.  llama.cpp's converter always uses
        # low 1, high 4 and an 8192 original context; check that the tensor agrees.
        factors = np.array(rope_freqs.astype(mx.float32))
        factor, old = _short_float(factors.max()), 8192
        base = meta.get("llama.rope.freq_base", 10000.0)
        wavelen = 2 * np.pi * base ** (np.arange(0, head_dim, 2) / head_dim)
        smooth = (old / wavelen - 1.0) / 3.0
        expect = np.where(wavelen < old / 4, 1.0, 1 / ((1 - smooth) / factor + smooth))
        expect = np.where(wavelen > old, factor, expect)
        if expect.shape != factors.shape or not np.allclose(expect, factors, rtol=1e-3):
            raise GGUFImportError("rope_freqs does not match llama3 rope scaling (8192, 1, 4)")
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0}
        return scaling | {"high_freq_factor": 4.0, "original_max_position_embeddings": old}
    kind, scale = meta.get("llama.rope.scaling.type"), meta.get("llama.rope.scaling.factor")
    if kind in (None, "none") or scale in (None, 0.0, 1.0):
        return None
    if kind == "linear":
        return {"type": "linear", "factor": _short_float(scale)}
    if kind == "yarn":
        original = _require(meta, "llama.rope.scaling.original_context_length")
        return {"type": "yarn", "factor": scale, "original_max_position_embeddings": original}
    raise GGUFImportError(f"unsupported llama.rope.scaling.type {kind!r}")


def _quantization(weights: dict[str, mx.array]) -> dict[str, Any] | None:
    """mlx-lm's ``quantization`` config: the commonest bits plus per-module overrides."""
    bits = {}
    for name, scales in weights.items():
        if name.endswith(".scales"):
            module = name.removesuffix(".scales")
            bits[module] = weights[f"{module}.weight"].shape[-1] * 32 // (scales.shape[-1] * 32)
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
        # MLX's CPU backend runs float16 quantized matmuls ~40x slower than float32 (and
        # SmolLM2 answers badly in float16 there): convert for the machine that serves.
        return mx.float32
    # As mlx_lm.convert writes: float16 beside quantized weights; F32 files stay F32.
    return mx.float16 if quantized or embed_dtype != mx.float32 else mx.float32


def _convert(path: Path, dtype: str | None) -> tuple[dict[str, mx.array], dict, dict]:
    """(mlx-lm weights, config.json, plain metadata) for the GGUF at ``path``."""
    _check_tensor_types(path)
    try:
        loaded = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError) as e:
        raise GGUFImportError(f"MLX could not read {path}: {e}") from e
    tensors, raw_meta = cast(tuple[dict[str, mx.array], dict[str, Any]], loaded)
    meta = {key: _plain(value) for key, value in raw_meta.items()}
    if (arch := _require(meta, "general.architecture")) != "llama":
        raise GGUFImportError(f"unsupported architecture {arch!r}; only 'llama' is supported")
    if meta.get("llama.expert_count", 0):
        raise GGUFImportError("mixture-of-experts llama GGUFs (e.g. Mixtral) are not supported")
    hidden = _require(meta, "llama.embedding_length")
    heads = _require(meta, "llama.attention.head_count")
    head_dim = meta.get("llama.attention.key_length", hidden // heads)
    if meta.get("llama.attention.value_length", head_dim) != head_dim:
        raise GGUFImportError("mlx-lm's llama needs key_length == value_length")
    if meta.get("llama.rope.dimension_count", head_dim) != head_dim:
        raise GGUFImportError("mlx-lm's llama has no partial rotary embeddings")
    if (embed := tensors.get("token_embd.weight")) is None:
        raise GGUFImportError("GGUF has no token_embd.weight tensor")
    rope_freqs = tensors.pop("rope_freqs.weight", None)  # becomes config rope_scaling
    quantized = any(name.endswith(".scales") for name in tensors)
    float_dtype = _float_dtype(dtype, quantized, embed.dtype)
    weights = {
        _hf_name(n): v.astype(float_dtype) if mx.issubdtype(v.dtype, mx.floating) else v
        for n, v in tensors.items()
    }
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
        # The embedding's rows, which llama.vocab_size (optional) and the token list match.
        "vocab_size": embed.shape[0],
        "max_position_embeddings": _require(meta, "llama.context_length"),
        "tie_word_embeddings": "lm_head.weight" not in weights,
        # llama.cpp permutes Q/K rows for its interleaved rope: keep them, rotate likewise.
        "rope_traditional": True,
        "attention_bias": any(".self_attn." in n and n.endswith(".bias") for n in weights),
        "mlp_bias": any(".mlp." in n and n.endswith(".bias") for n in weights),
    }
    if "llama.attention.key_length" in meta:
        config["head_dim"] = head_dim
    if (scaling := _rope_scaling(meta, rope_freqs, head_dim)) is not None:
        config["rope_scaling"] = scaling
    if (bos := meta.get("tokenizer.ggml.bos_token_id")) is not None:
        config["bos_token_id"] = bos
    # Stop at end-of-turn too: llama 3 files may name <|eot_id|> apart from EOS.
    eos = [meta.get(f"tokenizer.ggml.{key}_token_id") for key in ("eos", "eot", "eom")]
    eos = list(dict.fromkeys(i for i in eos if i is not None))
    if eos:
        config["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if (quantization := _quantization(weights)) is not None:
        config["quantization"] = config["quantization_config"] = quantization
    layers = {int(m[1]) for n in weights if (m := re.match(r"model\.layers\.(\d+)\.", n))}
    if layers != set(range(config["num_hidden_layers"])):
        raise GGUFImportError("the blk.N tensors do not match llama.block_count")
    return weights, config, meta


def import_gguf(
    gguf_path: Path, out_dir: Path, *, name: str | None = None, dtype: str | None = None
) -> Path:
    """Convert ``gguf_path`` into an MLX model directory at ``out_dir``; returns ``out_dir``.

    ``out_dir`` must not exist or be empty: it is built as ``.<name>.partial-<random>``
    beside it and renamed into place when complete.  ``name`` is recorded in config.json
    as ``_name_or_path``.  ``dtype`` ("float16"/"float32") is the float dtype written; by
    default float32 if MLX runs on the CPU, else float16 beside quantized weights.
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
    """``python -m engine.gguf_import FILE.gguf OUT_DIR [--name NAME] [--dtype DTYPE]``."""
    parser = argparse.ArgumentParser(description="Convert a llama GGUF into an MLX model.")
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
