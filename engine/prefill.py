"""Chunked prefill: a prompt processed in slices, one slice per worker step.

A new generation's prompt (what the prompt cache did not cover) is fed to the
model a slice at a time into its KV cache; between two slices the worker runs a
decode step of every other active generation, so a long prompt never stalls
the running streams for longer than one slice.  ``PrefillPace`` sizes slices
to a time budget (``SLICE_SECONDS``) from the prefill speed measured on this
model, so a slice takes about the same time on a fast GPU and on a slow CPU.
The last prompt token is left for mlx-lm's ``stream_generate``, which needs it
to produce the first token's logits.

Runs on the worker's MLX thread like every other MLX call.
"""

from __future__ import annotations

import time
from typing import Any

import mlx.core as mx

SLICE_SECONDS = 0.25  # the time one slice may take: the longest pause it causes
MIN_SLICE = 16
MAX_SLICE = 4096
FIRST_SLICE = 128  # before any measurement


class PrefillPace:
    """The measured prefill speed of one model, and the slice size it implies."""

    def __init__(self, budget: float = SLICE_SECONDS) -> None:
        self.budget = budget
        self.tokens_per_second: float | None = None

    def slice_tokens(self) -> int:
        if self.tokens_per_second is None:
            return FIRST_SLICE
        wanted = int(self.tokens_per_second * self.budget)
        return max(MIN_SLICE, min(MAX_SLICE, wanted))

    def record(self, tokens: int, seconds: float) -> None:
        if tokens < MIN_SLICE or seconds <= 0:
            return  # too small to say anything
        rate = tokens / seconds
        old = self.tokens_per_second
        self.tokens_per_second = rate if old is None else 0.7 * old + 0.3 * rate


class Prefill:
    """The part of one prompt still to be fed to the model before decoding starts."""

    def __init__(self, model: Any, cache: list[Any], tokens: list[int], stream: Any) -> None:
        self._model = model
        self._cache = cache
        self._pending = tokens
        self._stream = stream
        self.slices = 0

    @property
    def done(self) -> bool:
        return not self._pending

    def step(self, pace: PrefillPace) -> None:
        """Feed one slice of the pending tokens into the KV cache."""
        size = pace.slice_tokens()
        chunk, self._pending = self._pending[:size], self._pending[size:]
        started = time.perf_counter()
        with mx.stream(self._stream):
            self._model(mx.array(chunk)[None], cache=self._cache)
            mx.eval([c.state for c in self._cache])
        pace.record(len(chunk), time.perf_counter() - started)
        self.slices += 1
        mx.clear_cache()
