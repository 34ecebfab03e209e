"""A lease: the right to run requests on a ready model until released.

The registry creates a lease when it admits a waiting request and is the only
one that releases it (``Registry.release``, exactly once: ``released`` guards
it).  A lease remembers its caller, so the registry can count one caller's
running requests against its share of a model (``queue_per_key``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator

from engine.protocol import (
    PLAIN_OUTPUT,
    ChatMessage,
    Delta,
    Finished,
    OutputSpec,
    SamplingParams,
    Started,
)
from engine.workers import Worker


class Lease:
    """The right to run requests on a ready model until released (exactly once)."""

    _ids = itertools.count(1)

    def __init__(
        self,
        model_id: str,
        worker: Worker,
        caller: str = "-",
        started: float | None = None,
        kv_row: int = 0,
        kv_choices: int = 1,
    ) -> None:
        self.id = next(Lease._ids)
        self.model_id = model_id
        self.worker = worker
        self.caller = caller
        self.released = False
        self.kv_row = kv_row  # the KV cache each choice reserves (prompt plus max_tokens)
        self.kv_choices = kv_choices
        self.started = time.monotonic() if started is None else started  # the registry's clock

    def generate(
        self,
        params: SamplingParams,
        *,
        messages: tuple[ChatMessage, ...] | None = None,
        prompt: str | None = None,
        tokens: tuple[int, ...] | None = None,
        partition: str = "",
        output: OutputSpec = PLAIN_OUTPUT,
    ) -> AsyncIterator[Started | Delta | Finished]:
        return self.worker.generate(
            params,
            messages=messages,
            prompt=prompt,
            tokens=tokens,
            partition=partition,
            output=output,
            caller=self.caller,
        )
