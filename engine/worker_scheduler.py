"""Inside a worker: which generation advances next, and how much KV cache each holds.

Pure logic, no MLX: the worker's MLX thread drives it with the real sequences
and decoders of ``engine.generation``; the unit tests drive it with fakes.

One ``step`` is one turn of the worker:

1. at most one prefill slice, of the prompt whose turn it is: callers take
   turns slice by slice (round robin across callers, first come first served
   within one), so one caller's long prompts cannot hold back another's;
2. then one decode step of every generation whose prompt is in: one batched
   forward pass, or one token each in turn, as the model's decoder does it.

A running stream thus waits at most one slice plus one decode step between two
tokens, whatever the others' prompts are.  A slice may take ``SLICE_SECONDS``,
or 1.5 times the last decode step when that is longer (many streams decoding
one token each in turn): a running stream's longest wait stays within about
two and a half of its usual gaps, and a new prompt is not starved by the
streams already running.
The longest wait of the last minute is kept (``longest_pause``).

KV reservation: a generation reserves ``kv_tokens`` (its prompt plus its clamped
``max_tokens``) of the model's KV budget when it is added.  A batched decoder
pads every row of its batch to the longest one, so there the reservation of the
running set is its size times its largest reservation (``kv_cost``).  One that does not fit
beside the running ones waits, first come first served, until others leave; one
larger than the whole budget is refused at once (``KVBudgetExceeded``).  The
gateway's registry reserves the same way before it sends a request, so a wait
here is rare: it covers the gateway's estimate being short of the real count.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

PAUSE_WINDOW = 60.0  # seconds over which the longest decode pause is reported
SLICE_SECONDS = 0.25  # a prefill slice's time when decode steps are short
SLICE_PER_STEP = 1.5  # else at most this many decode steps' time


class KVBudgetExceeded(ValueError):
    """A generation needs more KV cache than the model's whole budget."""


class Sequence(Protocol):
    """One generation as the scheduler sees it."""

    @property
    def req_id(self) -> int: ...

    @property
    def caller(self) -> str: ...

    @property
    def kv_tokens(self) -> int: ...

    @property
    def prefilled(self) -> bool:
        """Whether every prompt token but the last is in its KV cache."""
        ...

    def prefill_slice(self, budget: float) -> None:
        """Feed the next slice of the prompt into its KV cache, in about ``budget`` s."""
        ...


S = TypeVar("S", bound=Sequence)
# What one sequence's step produced: output (or None: nothing to send yet), whether
# the sequence is done, or the exception that ended it.
Outcome = tuple[object | None, bool] | BaseException


class Decoder(Protocol[S]):
    """Decodes the generations whose prompts are in: batched or one at a time."""

    mode: str

    def join(self, seq: S) -> None: ...

    def leave(self, seq: S) -> None:
        """Forget ``seq`` (finished, cancelled or failed); a no-op when it is gone."""
        ...

    def step(self) -> Iterator[tuple[S, Outcome]]:
        """One decode step of every joined sequence, outcomes as they come."""
        ...

    def kv_bytes(self) -> int: ...


@dataclass(frozen=True)
class SchedulerStats:
    decoding: str
    batch: int  # generations decoding
    prefilling: int  # generations whose prompt is being fed in
    waiting: int  # generations waiting for KV budget
    kv_budget_tokens: int
    kv_reserved_tokens: int
    longest_pause: float  # seconds, the longest wait between two tokens in the last minute


def kv_cost(mode: str, reservations: list[int]) -> int:
    """The KV tokens of sequences reserving ``reservations`` (zeros are ignored):
    their sum, or in one batch (every row padded to the longest) their number
    times the largest."""
    sizes = [r for r in reservations if r > 0]
    if not sizes:
        return 0
    return len(sizes) * max(sizes) if mode == "batched" else sum(sizes)


class WorkerScheduler(Generic[S]):
    def __init__(
        self,
        decoder: Decoder[S],
        kv_budget_tokens: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.decoder = decoder
        self.kv_budget_tokens = kv_budget_tokens
        self._clock = clock
        self._waiting: deque[S] = deque()
        self._prefilling: OrderedDict[str, deque[S]] = OrderedDict()  # by caller, in turn
        self._decoding: dict[int, S] = {}
        self._last_token: dict[int, float] = {}
        self._reservations: dict[int, int] = {}  # started sequences' kv_tokens
        self._pauses: deque[tuple[float, float]] = deque()  # (when, gap), gaps decreasing
        self._step_seconds = 0.0  # the last decode step's time

    # --- joining and leaving -------------------------------------------------

    @property
    def active(self) -> bool:
        return bool(self._waiting or self._prefilling or self._decoding)

    def __contains__(self, req_id: int) -> bool:
        return self.find(req_id) is not None

    def add(self, seq: S) -> None:
        """Start ``seq`` now if its KV reservation fits, else queue it; raise
        ``KVBudgetExceeded`` when it could never fit."""
        if seq.kv_tokens > self.kv_budget_tokens:
            raise KVBudgetExceeded(
                f"the request needs {seq.kv_tokens} tokens of KV cache (prompt plus "
                f"max_tokens); this model serves at most {self.kv_budget_tokens}"
            )
        self._waiting.append(seq)
        self._start_waiting()

    def remove(self, req_id: int) -> S | None:
        """Take ``req_id`` out wherever it is (a cancel); its reservation is freed."""
        seq = self.find(req_id)
        if seq is None:
            return None
        if seq in self._waiting:
            self._waiting.remove(seq)
            return seq
        self._drop(seq)
        return seq

    def find(self, req_id: int) -> S | None:
        if req_id in self._decoding:
            return self._decoding[req_id]
        for seq in self._waiting:
            if seq.req_id == req_id:
                return seq
        for queue in self._prefilling.values():
            for seq in queue:
                if seq.req_id == req_id:
                    return seq
        return None

    def _start_waiting(self) -> None:
        while self._waiting and self.kv_cost(self._waiting[0].kv_tokens) <= self.kv_budget_tokens:
            seq = self._waiting.popleft()
            self._reservations[seq.req_id] = seq.kv_tokens
            if seq.prefilled:
                self._join(seq)
            else:
                self._prefilling.setdefault(seq.caller, deque()).append(seq)

    def _join(self, seq: S) -> None:
        self._decoding[seq.req_id] = seq
        self.decoder.join(seq)

    def _drop(self, seq: S) -> None:
        """Release a started sequence's reservation and take it out of its stage."""
        self._reservations.pop(seq.req_id, None)
        if self._decoding.pop(seq.req_id, None) is not None:
            self._last_token.pop(seq.req_id, None)
            self.decoder.leave(seq)
        else:
            queue = self._prefilling.get(seq.caller)
            if queue is not None and seq in queue:
                queue.remove(seq)
                if not queue:
                    del self._prefilling[seq.caller]
        self._start_waiting()

    # --- one turn ------------------------------------------------------------

    def step(self) -> Iterator[tuple[S, Outcome]]:
        """One prefill slice (the caller in turn), then one decode step; yields what
        each sequence produced.  A sequence that is done or failed has left when
        its outcome is yielded."""
        sliced = self._slice()
        if sliced is not None:
            yield sliced
        started = self._clock()
        for seq, outcome in self.decoder.step():
            now = self._clock()
            done = isinstance(outcome, BaseException) or outcome[1]
            previous = self._last_token.get(seq.req_id)
            if previous is not None:
                self._record_pause(now, now - previous)
            if done:
                self._drop(seq)
            else:
                self._last_token[seq.req_id] = now
            yield seq, outcome
        self._step_seconds = self._clock() - started if self._decoding else 0.0

    def slice_budget(self) -> float:
        """The time the next prefill slice may take."""
        return max(SLICE_SECONDS, SLICE_PER_STEP * self._step_seconds)

    def _slice(self) -> tuple[S, Outcome] | None:
        if not self._prefilling:
            return None
        caller, queue = next(iter(self._prefilling.items()))
        seq = queue[0]
        self._prefilling.move_to_end(caller)  # the next slice is another caller's
        try:
            seq.prefill_slice(self.slice_budget())
        except Exception as exc:  # noqa: BLE001 (reported to its request alone)
            self._drop(seq)
            return seq, exc
        if seq.prefilled:
            queue.popleft()
            if not queue:
                del self._prefilling[caller]
            self._join(seq)
        return None

    # --- what it reports -------------------------------------------------------

    def _record_pause(self, now: float, gap: float) -> None:
        # Keep a decreasing run of (when, gap): the front is the window's longest.
        while self._pauses and self._pauses[-1][1] <= gap:
            self._pauses.pop()
        self._pauses.append((now, gap))

    def longest_pause(self) -> float:
        horizon = self._clock() - PAUSE_WINDOW
        while self._pauses and self._pauses[0][0] < horizon:
            self._pauses.popleft()
        return self._pauses[0][1] if self._pauses else 0.0

    def kv_cost(self, extra: int = 0) -> int:
        """The KV tokens the started sequences (and one more of ``extra``) take."""
        return kv_cost(self.decoder.mode, [*self._reservations.values(), extra])

    def prefilling(self) -> list[S]:
        """The started sequences whose prompt is still being fed in."""
        return [seq for queue in self._prefilling.values() for seq in queue]

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            decoding=self.decoder.mode,
            batch=len(self._decoding),
            prefilling=sum(len(q) for q in self._prefilling.values()),
            waiting=len(self._waiting),
            kv_budget_tokens=self.kv_budget_tokens,
            kv_reserved_tokens=self.kv_cost(),
            longest_pause=self.longest_pause(),
        )
