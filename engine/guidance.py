"""Constrained decoding in a worker: llguidance masks the logits token by token.

``Guide`` belongs to one loaded model: it builds llguidance's tokenizer from the
model's (once, on the first constrained request: about half a second) and keeps
the compiled grammars of recent constraints, so a schema is compiled once and
each request gets a copy of the compiled matcher.  ``Guide.processor`` is an
mlx-lm logits processor: before each token it advances the matcher by the
token sampled last and sets every token the grammar forbids to ``-inf``; once
the grammar is complete only the end-of-sequence tokens are allowed, so the
generation ends there.  Runs on the worker's MLX thread like all MLX work.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np

GRAMMAR_CACHE = 32


def _last(tokens: mx.array) -> int:
    return int(tokens[-1].item())  # type: ignore[arg-type]


class GrammarFailed(ValueError):
    """The grammar did not compile, or the output left it (the message says how)."""


class Guide:
    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._tokenizer = tokenizer  # mlx-lm's TokenizerWrapper
        self._vocab_size = vocab_size
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self.compiles = 0

    def _llt(self) -> llguidance.LLTokenizer:
        if self._lltokenizer is None:
            hf = getattr(self._tokenizer, "_tokenizer", self._tokenizer)
            eos = sorted(self._tokenizer.eos_token_ids) or None
            self._lltokenizer = llguidance.hf.from_tokenizer(hf, eos_token=eos)
        return self._lltokenizer

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher of ``grammar``, compiled once and then copied."""
        pristine = self._compiled.get(grammar)
        if pristine is None:
            pristine = llguidance.LLMatcher(self._llt(), grammar, log_level=0)
            if pristine.is_error():
                raise GrammarFailed(pristine.get_error())
            self.compiles += 1
            self._compiled[grammar] = pristine
            while len(self._compiled) > GRAMMAR_CACHE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(grammar)
        return pristine.deep_copy()

    def processor(self, grammar: str) -> Callable[[mx.array, mx.array], mx.array]:
        matcher = self.matcher(grammar)
        words = (self._llt().vocab_size + 31) // 32
        bitmask = np.zeros(words, dtype=np.int32)
        seen: list[int] = []  # how many tokens the processor had seen (prompt included)

        def process(tokens: mx.array, logits: mx.array) -> mx.array:
            count = int(tokens.size)
            if seen and count > seen[0] and not matcher.consume_token(_last(tokens)):
                raise GrammarFailed(matcher.get_error() or "the output left the grammar")
            seen[:] = [count]
            matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)
            width = logits.shape[-1]
            allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:width]
            if allowed.size < width:
                allowed = np.pad(allowed, (0, width - allowed.size))
            return mx.where(mx.array(allowed.astype(np.bool_)), logits, -mx.inf)

        return process
