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

from engine.worker_scheduler import SLICE_SECONDS

MIN_SLICE = 1  # on a CPU a one-token slice costs no more per token than a long one
MAX_SLICE = 4096
FIRST_SLICE = 16  # before any measurement: small, since a CPU prefills ~10 tokens/s

log = logging.getLogger("engine.worker")


class PrefillPace:
    """The measured prefill speed of one model, and the slice size it implies.

    Cautious, since a slice that runs long is a pause for every running stream: a
    slower measurement counts mostly at once (later slices of a long prompt attend to
    more context, and the machine may be busy), a faster one less, and a slice is
    at most twice the largest one that kept within its budget (a small slice's
    speed, dominated by fixed costs, says little about a large one); one that ran a
    quarter over its budget halves that bound."""

    def __init__(self, budget: float = SLICE_SECONDS) -> None:
        self.budget = budget  # the default; a step may give another
        self.tokens_per_second: float | None = None
        self.proven = FIRST_SLICE // 2  # the largest slice that kept within its budget

    def slice_tokens(self, budget: float | None = None) -> int:
        if self.tokens_per_second is None:
            return FIRST_SLICE
        seconds = self.budget if budget is None else budget
        # Rounded, not cut: at ~7 tokens/s 1.8 tokens is two, not one slow 1-token slice.
        wanted = min(round(self.tokens_per_second * seconds), 2 * self.proven)
        return max(MIN_SLICE, min(MAX_SLICE, wanted))

    def record(self, tokens: int, seconds: float, budget: float | None = None) -> None:
        if tokens < MIN_SLICE or seconds <= 0:
            return
        rate = tokens / seconds
        old = self.tokens_per_second
        if old is None:
            self.tokens_per_second = rate
        else:
            weight = 0.7 if rate < old else 0.3
            self.tokens_per_second = (1 - weight) * old + weight * rate
        allowed = self.budget if budget is None else budget
        if seconds <= allowed:
            self.proven = max(self.proven, tokens)
        elif seconds > 1.25 * allowed:
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

    def step(self, pace: PrefillPace, budget: float | None = None) -> None:
        """Feed one slice of the pending tokens into the KV cache, sized to take about
        ``budget`` seconds (default: the pace's own)."""
        size = pace.slice_tokens(budget)
        chunk, self._pending = self._pending[:size], self._pending[size:]
        started = time.perf_counter()
        with mx.stream(self._stream):
            self._model(mx.array(chunk)[None], cache=self._cache)
            mx.eval([c.state for c in self._cache])
        seconds = time.perf_counter() - started
        pace.record(len(chunk), seconds, budget)
        log.debug("prefill slice of %d tokens in %.3f s", len(chunk), seconds)
        self.slices += 1
        mx.clear_cache()
