"""A model's record in the registry, and a request waiting in its queue.

The registry is the only writer of these records; the methods here only read
them (a snapshot for the HTTP layer, one for the deadline check, and the
counts the load-authority and per-caller rules are decided on).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from engine.deadlines import SlotSnapshot
from engine.fairqueue import FairQueue
from engine.leases import Lease
from engine.memory import MemoryNeed
from engine.scheduler import Resident
from engine.states import ModelState, ModelStatus, Serving, WaitingRequest
from engine.store import ModelSpec
from engine.worker_scheduler import kv_cost
from engine.workers import Worker


@dataclass(eq=False)
class Waiter:
    caller: str
    future: asyncio.Future[Lease]
    enqueued: float
    may_load: bool = True  # whether this request may cause its model to be loaded
    kv_row: int = 0  # the KV cache each of its choices reserves: prompt plus max_tokens
    kv_choices: int = 1
    internal: bool = False  # the admin's own load (``request_load``): outside any caller's share
    keep_alive: float | None = None  # set as the model's keep-alive when it gets its lease
    reason: str = "queued"


@dataclass(eq=False)
class Slot:
    spec: ModelSpec
    state: ModelState = ModelState.ABSENT
    worker: Worker | None = None
    need: MemoryNeed | None = None
    leases: set[Lease] = field(default_factory=set)
    queue: FairQueue[Waiter] = field(default_factory=FairQueue)
    ready_since: float | None = None
    last_used: float | None = None
    load_started: float | None = None
    last_progress: float | None = None
    progress_bytes: int = 0
    load_seconds: float | None = None
    state_since: float = 0.0
    memory_bytes: int = 0
    error: str | None = None
    task: asyncio.Task[None] | None = None
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    loads: int = 0
    crashed: bool = False  # failed because its worker died while serving
    decoding: str | None = None  # how its worker decodes (from the load), and why
    decoding_reason: str = ""
    keep_alive_override: float | None = None  # a request's keep_alive; cleared with its worker

    @property
    def kv_budget(self) -> int:
        """Tokens of KV cache all running requests may reserve together (0: unbounded)."""
        return self.need.kv_tokens if self.need else 0

    def kv_cost(self, extra: tuple[int, int] = (0, 0)) -> int:
        """The KV tokens the running requests (and ``extra``: choices, tokens per
        choice) reserve, as the worker's decoder spends them: summed, or for a
        batched model every row padded to the longest."""
        rows = [r for lease in self.leases for r in [lease.kv_row] * lease.kv_choices]
        rows += [extra[1]] * extra[0]
        return kv_cost(self.decoding or "interleaved", rows)

    @property
    def kv_reserved(self) -> int:
        return self.kv_cost()

    def kv_fits(self, choices: int, row: int) -> bool:
        """Whether a request of ``choices`` sequences reserving ``row`` tokens each
        may start now: it fits beside the running ones, or nothing runs (a request
        larger than the budget is the pipeline's to clamp, the worker's to refuse)."""
        budget = self.kv_budget
        return not self.leases or not budget or self.kv_cost((choices, row)) <= budget

    def serving(self) -> Serving | None:
        if self.state is not ModelState.READY or self.decoding is None:
            return None
        stats = self.worker.stats if self.worker is not None else None
        return Serving(
            decoding=self.decoding,
            decoding_reason=self.decoding_reason,
            batch=stats.batch if stats else 0,
            prefilling=stats.prefilling if stats else 0,
            waiting=stats.waiting if stats else 0,
            kv_budget_tokens=self.kv_budget,
            kv_reserved_tokens=self.kv_reserved,
            kv_used_bytes=stats.kv_used_bytes if stats else 0,
            longest_pause=stats.longest_pause if stats else 0.0,
        )

    @property
    def recoverable(self) -> bool:
        """Failed because its worker died: bringing it back is recovery, not a load."""
        return self.state is ModelState.FAILED and self.crashed

    def load_permitted(self, may_load: bool = False) -> bool:
        """Whether bringing this model in is allowed: a request that may load
        (``may_load``, or one already queued), or recovery after a crash."""
        return may_load or self.recoverable or any(w.may_load for w in self.queue)

    def held_by(self, caller: str) -> int:
        """The caller's queued-plus-running requests on this model (the admin's own
        load not counted)."""
        queued = sum(1 for w in self.queue if w.caller == caller and not w.internal)
        return queued + sum(1 for lease in self.leases if lease.caller == caller)

    def resident(self) -> Resident:
        """The snapshot ``plan_load`` decides on (for a model that holds memory)."""
        return Resident(
            self.spec.id,
            self.state.value,  # type: ignore[arg-type]
            self.need.total if self.need else 0,
            len(self.leases) + len(self.queue),
            self.spec.pinned,
            self.ready_since,
            self.last_used,
        )

    def keep_alive(self, default: float) -> float:
        """Seconds this model stays loaded once idle (negative: for ever): a
        request's override, else the catalogue's, else ``default``.  A pinned model
        never unloads."""
        if self.spec.pinned:
            return -1.0
        if self.keep_alive_override is not None:
            return self.keep_alive_override
        return default if self.spec.keep_alive is None else self.spec.keep_alive

    def deadline_snapshot(self) -> SlotSnapshot:
        return SlotSnapshot(
            model_id=self.spec.id,
            state=self.state,
            state_since=self.state_since,
            last_progress=self.last_progress,
            leases=len(self.leases),
            queued=len(self.queue),
            pinned=self.spec.pinned,
            keep_alive=(
                self.spec.keep_alive
                if self.keep_alive_override is None
                else self.keep_alive_override
            ),
            last_used=self.last_used,
        )

    def status(self, now: float, default_keep_alive: float) -> ModelStatus:
        return ModelStatus(
            id=self.spec.id,
            state=self.state,
            leases=len(self.leases),
            queued=len(self.queue),
            need_bytes=self.need.total if self.need else None,
            memory_bytes=self.memory_bytes,
            load_seconds=self.load_seconds,
            idle_seconds=None if self.last_used is None or self.leases else now - self.last_used,
            resident_seconds=None if self.ready_since is None else now - self.ready_since,
            pinned=self.spec.pinned,
            error=self.error,
            loads=self.loads,
            pid=self.worker.pid if self.worker is not None else None,
            crashed=self.recoverable,
            waiting=tuple(WaitingRequest(w.caller, now - w.enqueued, w.reason) for w in self.queue),
            serving=self.serving(),
            keep_alive=self.keep_alive(default_keep_alive),
        )

    # --- estimates (for honest Retry-After values) ---------------------------

    def per_request(self) -> float:
        """The measured mean duration of this model's recent requests (5 s before any)."""
        return sum(self.durations) / len(self.durations) if self.durations else 5.0

    def load_remaining(self, now: float) -> float:
        """Seconds of load left before the model can serve (a whole load when it is
        not loading: draining, unloading, absent or failed)."""
        if self.state is ModelState.READY:
            return 0.0
        weights = self.need.weights if self.need else 0
        expected = self.load_seconds or (weights / 200e6 + 3.0)
        started = self.load_started if self.state is ModelState.LOADING else now
        return max(0.0, expected - (now - (started or now)))

    def queue_wait(self, now: float, max_concurrent: int) -> float:
        """Seconds until a new request could start: the rest of a load, plus the
        queue ahead of it at the measured request duration."""
        queue = len(self.queue) * self.per_request() / max_concurrent
        return max(1.0, self.load_remaining(now) + queue)

    def caller_wait(self, held: int, now: float, max_concurrent: int) -> float:
        """Seconds until one of a caller's ``held`` requests should have finished:
        the rest of a load, then its requests at the measured request duration,
        ``max_concurrent`` at a time."""
        own = held * self.per_request() / max_concurrent
        return max(1.0, self.load_remaining(now) + own)
