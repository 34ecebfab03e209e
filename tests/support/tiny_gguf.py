"""Tiny random llama GGUF files for the GGUF importer's tests (milliseconds, no network).

``write_tiny_gguf`` writes a 2-layer llama (hidden 64, 4 heads, 2 KV heads, FFN 128) in
llama.cpp's layout, with a byte-level BPE vocabulary (GPT-2's 256 byte symbols, a few
merges, ChatML control tokens) and a ChatML chat template.  ``reference_logits`` runs
that file's model in NumPy from the dequantized GGUF tensors, with llama.cpp's
semantics (interleaved rope), as the ground truth a conversion must reproduce.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

QTYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "mixed")
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, CONTEXT = 64, 128, 2, 4, 2, 256
HEAD_DIM = HIDDEN // HEADS
RMS_EPS, ROPE_BASE = 1e-5, 10000.0
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2: control
USER_DEFINED = "<think>"  # matched whole, but not special
MERGES = ["Ġ t", "h e", "Ġt he", "l l", "e ll", "1 2"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
Q = gguf.GGMLQuantizationType
# The GGML type of each 2-D tensor in the "mixed" file, by GGUF tensor kind.
MIXED = {"token_embd": Q.Q8_0, "ffn_down": Q.Q8_0, "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_1}
MIXED |= {"output": Q.F16}  # attn_* are Q4_0


def byte_symbols() -> list[str]:
    """GPT-2's ``bytes_to_unicode`` characters, in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    spell = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [spell[b] for b in range(256)]


def vocabulary() -> tuple[list[str], list[int]]:
    """The tokens and llama.cpp token types (1 normal, 3 control, 4 user-defined)."""
    merged = ["".join(m.split(" ")) for m in MERGES]
    tokens = SPECIALS + byte_symbols() + merged + [USER_DEFINED]
    types = [3] * len(SPECIALS) + [1] * (256 + len(merged)) + [4]
    return tokens, types


def tensor_shapes(tied: bool = True) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> (rows, columns) as NumPy (and ``mx.load``) see it."""
    vocab = len(vocabulary()[0])
    kv = KV_HEADS * HEAD_DIM
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, HIDDEN)}
    for i in range(LAYERS):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (HIDDEN,),
            f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.attn_k.weight": (kv, HIDDEN),
            f"blk.{i}.attn_v.weight": (kv, HIDDEN),
            f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.ffn_norm.weight": (HIDDEN,),
            f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_down.weight": (HIDDEN, FFN),
        }
    shapes["output_norm.weight"] = (HIDDEN,)
    if not tied:
        shapes["output.weight"] = (vocab, HIDDEN)
    return shapes


def ggml_type(name: str, qtype: str) -> gguf.GGMLQuantizationType:
    """The type tensor ``name`` is stored as in a ``qtype`` file (norms are always F32)."""
    if name.endswith("norm.weight"):
        return Q.F32
    if qtype == "mixed":
        return MIXED.get(name.split(".")[-2], Q.Q4_0)
    return gguf.GGMLQuantizationType[qtype]


def llama3_rope_factors(factor: float = 8.0, old_context: int = 8192) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` for llama3 rope scaling (low 1, high 4), per rope pair."""
    wavelen = 2 * np.pi * ROPE_BASE ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    smooth = (old_context / wavelen - 1.0) / 3.0
    medium = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old_context / 4, 1.0, np.where(wavelen > old_context, factor, medium))


def write_tiny_gguf(
    path: Path,
    qtype: str = "Q4_1",
    *,
    arch: str = "llama",
    tied: bool = True,
    rope_freqs: bool = False,
    seed: int = 0,
) -> Path:
    """Write a random tiny llama GGUF with 2-D weights stored as ``qtype``; returns ``path``.

    ``qtype`` is one of :data:`QTYPES`; ``tied=False`` adds an ``output.weight`` tensor;
    ``rope_freqs`` adds Llama 3.1's rope factor tensor.
    """
    rng = np.random.default_rng(seed)
    tokens, types = vocabulary()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_block_count(LAYERS)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, shape in tensor_shapes(tied).items():
        if len(shape) == 1:
            data = 1.0 + 0.1 * rng.standard_normal(shape)
        else:  # unit-scale activations: embeddings ~N(0, 1), projections ~N(0, 1/in)
            scale = 1.0 if name == "token_embd.weight" else shape[1] ** -0.5
            data = scale * rng.standard_normal(shape)
        kind = ggml_type(name, qtype)
        data = data.astype(np.float32)
        if kind == Q.F32:
            writer.add_tensor(name, data)
        elif kind == Q.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    if rope_freqs:
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF, dequantized by the ``gguf`` package, as float64 (rows, cols)."""
    reader = gguf.GGUFReader(str(path))
    return {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        for t in reader.tensors
    }


def reference_logits(path: Path, token_ids: list[int]) -> np.ndarray:
    """Logits (tokens, vocab) of a ``write_tiny_gguf`` model, computed in NumPy."""
    w = read_weights(path)
    n = len(token_ids)

    def norm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + RMS_EPS) * weight

    def rope(x: np.ndarray) -> np.ndarray:  # llama.cpp's: rotate adjacent pairs
        inv = ROPE_BASE ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
        if "rope_freqs.weight" in w:
            inv = inv / w["rope_freqs.weight"]
        angle = np.arange(n)[:, None, None] * inv
        cos, sin = np.cos(angle), np.sin(angle)
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    causal = np.triu(np.full((n, n), -np.inf), k=1)
    x = w["token_embd.weight"][token_ids]
    for i in range(LAYERS):
        p = f"blk.{i}."
        h = norm(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(n, HEADS, HEAD_DIM))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(n, KV_HEADS, HEAD_DIM))
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, KV_HEADS, HEAD_DIM)
        k, v = (np.repeat(t, HEADS // KV_HEADS, axis=1) for t in (k, v))
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(HEAD_DIM) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n, HIDDEN)
        x = x + attn @ w[p + "attn_output.weight"].T
        h = norm(x, w[p + "ffn_norm.weight"])
        gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
    x = norm(x, w["output_norm.weight"])
    return x @ w.get("output.weight", w["token_embd.weight"]).T
