"""Rebuild a Hugging Face ``tokenizer.json`` from a GGUF file's tokenizer metadata.

A GGUF carries no ``tokenizer.json``; llama.cpp stores the vocabulary, merges, token
types and special-token ids as ``tokenizer.ggml.*`` metadata.  This module turns that
back into a :mod:`tokenizers` tokenizer plus ``tokenizer_config.json`` and
``special_tokens_map.json``, which ``transformers``/``mlx_lm`` load.

Supported: ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE; the pre-tokenizer is
picked from ``tokenizer.ggml.pre``) and ``"llama"`` (SentencePiece BPE, rebuilt as
a byte-fallback BPE whose merges are ranked by the merged token's score).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
)

log = logging.getLogger("engine.gguf_tokenizer")

# llama.cpp token types (``tokenizer.ggml.token_type``).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4

# The split regex of Llama 3's tokenizer.json (``tokenizer.ggml.pre == "llama-bpe"``).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PRE = {"llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3", "dbrx"}
SPECIAL_KEYS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


class TokenizerImportError(ValueError):
    """The GGUF's tokenizer metadata is missing or describes an unsupported tokenizer."""


def _byte_level_pre_tokenizer(pre: str | None) -> tuple[pre_tokenizers.PreTokenizer, bool]:
    """The pre-tokenizer for ``tokenizer.ggml.pre`` and whether BPE ignores merges."""
    if pre == "smollm":
        # What SmolLM2's own tokenizer.json uses.
        steps = [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
        return pre_tokenizers.Sequence(steps), False
    if pre in LLAMA3_PRE:
        # llama.cpp (like Llama 3's tokenizer.json) takes a whole word found in the vocab as is.
        steps = [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
        return pre_tokenizers.Sequence(steps), True
    if pre not in (None, "default", "gpt2"):
        log.warning("unknown tokenizer.ggml.pre %r; using GPT-2's pre-tokenizer", pre)
    return pre_tokenizers.ByteLevel(add_prefix_space=False), False


def _byte_level_bpe(meta: Mapping[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    """Byte-level BPE (GPT-2 family: SmolLM2, Llama 3, ...)."""
    if "tokenizer.ggml.merges" not in meta:
        raise TokenizerImportError("byte-level BPE tokenizer without tokenizer.ggml.merges")
    spell = _bytes_to_unicode()
    alphabet = set(spell.values())
    vocab: dict[str, int] = {}
    for index, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        # Added tokens keep their text (matched whole); llama.cpp may store other tokens
        # unspelled, so spell them in the byte alphabet the BPE model works in.
        if kind not in (CONTROL, USER_DEFINED) and not set(token) <= alphabet:
            token = "".join(spell[b] for b in token.encode("utf-8"))
        vocab.setdefault(token, index)
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    pre_tokenizer, ignore_merges = _byte_level_pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of byte-level BPE tokens."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}


def _sentencepiece_bpe(meta: Mapping[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    """SentencePiece BPE (Llama 2, Mistral, TinyLlama) as a byte-fallback BPE."""
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None:
        raise TokenizerImportError("SentencePiece tokenizer without tokenizer.ggml.scores")
    vocab = {token: index for index, token in reversed(list(enumerate(tokens)))}
    normal = {t for t, kind in zip(tokens, types, strict=True) if kind == NORMAL}
    # A merge (left, right) ranks by the score of the piece it makes, as SentencePiece
    # does; ties go to the longer left piece, like transformers' converter.
    ranked = []
    for piece, score in zip(tokens, scores, strict=True):
        if piece not in normal:
            continue
        pairs = [(piece[:i], piece[i:]) for i in range(1, len(piece))]
        pairs = [(a, b) for a, b in pairs if a in normal and b in normal]
        for a, b in sorted(pairs, key=lambda p: (vocab[p[0]], vocab[p[1]])):
            ranked.append((score, len(a), len(b), a, b))
    ranked.sort(key=lambda r: (r[0], r[1], r[2]), reverse=True)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    bpe = models.BPE(
        vocab=vocab,
        merges=[(a, b) for *_, a, b in ranked],
        unk_token=tokens[unk_id] if unk_id is not None else None,
        fuse_unk=True,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(bpe)
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _add_bos_eos(meta: Mapping[str, Any]) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS (llama.cpp adds BOS to SentencePiece by default)."""
    spm = meta.get("tokenizer.ggml.model") == "llama"
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", spm))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    return add_bos, add_eos


def build_tokenizer(meta: Mapping[str, Any]) -> Tokenizer:
    """The :class:`tokenizers.Tokenizer` that GGUF metadata ``meta`` (plain values) describes."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if kind is None or tokens is None:
        raise TokenizerImportError("missing tokenizer.ggml.model or tokenizer.ggml.tokens")
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if kind == "gpt2":
        tokenizer = _byte_level_bpe(meta, tokens, types)
    elif kind == "llama":
        tokenizer = _sentencepiece_bpe(meta, tokens, types)
    else:
        raise TokenizerImportError(f"unsupported tokenizer.ggml.model {kind!r} (gpt2, llama)")
    # Control and user-defined tokens are matched whole, so <|im_start|> stays one token.
    tokenizer.add_tokens(
        [
            AddedToken(t, special=k != USER_DEFINED, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k in (UNKNOWN, CONTROL, USER_DEFINED)
        ]
    )
    add_bos, add_eos = _add_bos_eos(meta)
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    if (add_bos and bos is not None) or (add_eos and eos is not None):
        head = [(tokens[bos], bos)] if add_bos and bos is not None else []
        tail = [(tokens[eos], eos)] if add_eos and eos is not None else []
        single = [t for t, _ in head] + ["$A"] + [t for t, _ in tail]
        pair = single + [t for t, _ in head] + ["$B"] + [t for t, _ in tail]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=" ".join(single), pair=" ".join(pair), special_tokens=head + tail
        )
    return tokenizer


def write_tokenizer_files(meta: Mapping[str, Any], out_dir: Path, *, max_length: int) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    tokenizer = build_tokenizer(meta)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    tokens = meta["tokenizer.ggml.tokens"]
    special = {
        name: tokens[meta[f"tokenizer.ggml.{key}"]]
        for name, key in SPECIAL_KEYS.items()
        if meta.get(f"tokenizer.ggml.{key}") is not None
    }
    add_bos, add_eos = _add_bos_eos(meta)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
    }
    if template := meta.get("tokenizer.chat_template"):
        config["chat_template"] = template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
