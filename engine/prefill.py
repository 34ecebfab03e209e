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

import logging
import time
from typing import Any

import mlx.core as mx

SLICE_SECONDS = 0.25  # the time one slice may take: the longest pause it causes
MIN_SLICE = 1  # on a CPU a one-token slice costs no more per token than a long one
MAX_SLICE = 4096
FIRST_SLICE = 16  # before any measurement: small, since a CPU prefills ~10 tokens/s

log = logging.getLogger("engine.worker")


class PrefillPace:
    """The measured prefill speed of one model, and the slice size it implies.

    Pessimistic, since a slice that runs long is a pause for every running stream:
    a slower measurement is believed at once (later slices of a long prompt attend
    to more context, and the machine may be busy), a faster one only gradually, and
    a slice is at most twice the largest one that kept within the budget (a small
    slice's speed, dominated by fixed costs, says little about a large one)."""

    def __init__(self, budget: float = SLICE_SECONDS) -> None:
        self.budget = budget
        self.tokens_per_second: float | None = None
        self.proven = FIRST_SLICE // 2  # the largest slice that kept within the budget

    def slice_tokens(self) -> int:
        if self.tokens_per_second is None:
            return FIRST_SLICE
        wanted = min(int(self.tokens_per_second * self.budget), 2 * self.proven)
        return max(MIN_SLICE, min(MAX_SLICE, wanted))

    def record(self, tokens: int, seconds: float) -> None:
        if tokens < MIN_SLICE or seconds <= 0:
            return
        rate = tokens / seconds
        old = self.tokens_per_second
        self.tokens_per_second = rate if old is None or rate < old else 0.7 * old + 0.3 * rate
        if seconds <= self.budget:
            self.proven = max(self.proven, tokens)
        else:
            self.proven = max(MIN_SLICE, min(self.proven, tokens // 2))


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
        seconds = time.perf_counter() - started
        pace.record(len(chunk), seconds)
        log.debug("prefill slice of %d tokens in %.3f s", len(chunk), seconds)
        self.slices += 1
        mx.clear_cache()
