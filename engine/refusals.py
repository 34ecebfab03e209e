"""Why the registry refuses a request at once, decided from plain numbers.

``refusal`` looks at what the registry knows when a request arrives for a
model (an ``Arrival``) and returns the error to raise before the request is
queued, or ``None``.  The checks run in this order:

1. ``LoadNotPermitted``: the model is absent or failed (not after a crash),
   this request may not load it, and no queued request that may is waiting.
2. ``InsufficientMemory``: it can never fit the budget beside the pinned models.
3. ``CallerBusy``: this caller already holds its share (``queue_per_key``) of
   the model's queued-plus-running requests.
4. ``ServerBusy``: the model's queue or the gateway's is full.

No clock read and no I/O here: the estimates for ``Retry-After`` are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import RegistryConfig
from engine.errors import CallerBusy, EngineError, InsufficientMemory, LoadNotPermitted, ServerBusy
from engine.memory import MemoryNeed, format_bytes


@dataclass(frozen=True)
class Arrival:
    """What the registry knows when a request arrives for ``model_id``."""

    model_id: str
    need: MemoryNeed
    pinned: int  # bytes held by the other pinned models
    load_refused: bool = False  # not loaded, and neither this request nor the queue may load it
    held: int | None = None  # this caller's queued-plus-running requests; None: not counted
    queued: int = 0  # the model's queue
    queued_total: int = 0  # every model's queues
    queue_wait: float = 1.0  # estimated seconds until a new request could start
    caller_wait: float = 1.0  # estimated seconds until one of this caller's requests ends


def refusal(arrival: Arrival, config: RegistryConfig) -> EngineError | None:
    model_id = arrival.model_id
    if arrival.load_refused:
        return not_permitted(model_id)
    too_big = never_fits(model_id, arrival.need, arrival.pinned, config.memory_budget)
    if too_big is not None:
        return too_big
    share = config.queue_per_key
    if arrival.held is not None and 0 < share <= arrival.held:
        return CallerBusy(
            f"this key already has {arrival.held} requests queued or running on model "
            f"{model_id} (its share is {share}); retry when one of them has finished",
            retry_after=max(1.0, arrival.caller_wait),
        )
    if arrival.queued_total >= config.queue_total or arrival.queued >= config.queue_per_model:
        which = "the gateway's" if arrival.queued_total >= config.queue_total else f"{model_id}'s"
        return ServerBusy(
            f"{which} request queue is full; retry later",
            retry_after=max(1.0, arrival.queue_wait),
        )
    return None


def not_permitted(model_id: str) -> LoadNotPermitted:
    return LoadNotPermitted(
        f"model {model_id} is not loaded and this key may not load it (the `load` scope)"
    )


def never_fits(
    model_id: str, need: MemoryNeed, pinned: int, budget: int
) -> InsufficientMemory | None:
    """The refusal of a model that cannot fit the budget even with every unpinned model gone."""
    if need.total + pinned <= budget:
        return None
    return InsufficientMemory(
        f"model {model_id} needs {format_bytes(need.total)} "
        f"(weights {format_bytes(need.weights)}, KV cache {format_bytes(need.kv_cache)} "
        f"for {need.context_length} tokens, overhead {format_bytes(need.overhead)}); "
        f"the memory budget is {format_bytes(budget)}"
        + (f", of which pinned models hold {format_bytes(pinned)}" if pinned else ""),
        need=need.total,
        budget=budget,
        pinned=pinned,
    )
