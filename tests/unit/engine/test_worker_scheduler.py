"""The worker's scheduler with a fake model: prefill slices, joins, leaves, cancels
and KV reservations, stepped by hand on a fake clock (no sleeps, no MLX).

A fake sequence's prompt is a number of slices; each slice costs ``SLICE`` seconds
and a decode step ``STEP`` seconds of the fake clock, so the pauses the scheduler
reports are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from engine.worker_scheduler import (
    SLICE_SECONDS,
    KVBudgetExceeded,
    Outcome,
    WorkerScheduler,
    kv_cost,
)

SLICE, STEP = 0.25, 0.05


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(eq=False)
class FakeSeq:
    req_id: int
    caller: str
    slices: int  # prompt slices still to feed
    max_tokens: int = 3
    kv_tokens: int = 100
    clock: Clock | None = None
    log: list[str] = field(default_factory=list)
    generated: int = 0
    fail_slice: bool = False
    budgets: list[float] = field(default_factory=list)

    @property
    def prefilled(self) -> bool:
        return self.slices == 0

    def prefill_slice(self, budget: float) -> None:
        self.budgets.append(budget)
        if self.fail_slice:
            raise RuntimeError("the slice failed")
        assert self.slices > 0, "sliced after its prompt was in"
        self.slices -= 1
        self.log.append(f"slice:{self.req_id}")
        if self.clock is not None:
            self.clock.now += SLICE


class FakeDecoder:
    """Decodes every joined sequence in one step (a batch), a token each."""

    mode = "batched"

    def __init__(self, clock: Clock, log: list[str]) -> None:
        self.clock = clock
        self.log = log
        self.joined: list[FakeSeq] = []
        self.left: list[int] = []

    def join(self, seq: FakeSeq) -> None:
        assert seq.prefilled, "joined before its prompt was in"
        self.joined.append(seq)
        self.log.append(f"join:{seq.req_id}")

    def leave(self, seq: FakeSeq) -> None:
        if seq in self.joined:
            self.joined.remove(seq)
            self.left.append(seq.req_id)

    def step(self) -> Iterator[tuple[FakeSeq, Outcome]]:
        if not self.joined:
            return
        self.clock.now += STEP * len(self.joined)  # one token each in turn
        for seq in list(self.joined):
            seq.generated += 1
            self.log.append(f"token:{seq.req_id}")
            yield seq, (f"t{seq.generated}", seq.generated >= seq.max_tokens)

    def kv_bytes(self) -> int:
        return 0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def make(clock, log):
    def build(budget: int = 10_000) -> tuple[WorkerScheduler[FakeSeq], FakeDecoder]:
        decoder = FakeDecoder(clock, log)
        return WorkerScheduler(decoder, budget, clock), decoder

    return build


def seq(req_id: int, caller: str, slices: int, clock: Clock, log: list[str], **kw) -> FakeSeq:
    return FakeSeq(req_id, caller, slices, clock=clock, log=log, **kw)


def drain(scheduler: WorkerScheduler[FakeSeq]) -> list[tuple[int, object]]:
    out = []
    while scheduler.active:
        out += [(s.req_id, o) for s, o in scheduler.step()]
    return out


def test_one_slice_per_step_and_the_running_stream_decodes_between_slices(make, clock, log):
    scheduler, _ = make()
    running = seq(1, "a", 0, clock, log, max_tokens=6)
    scheduler.add(running)
    list(scheduler.step())  # its first token
    long = seq(2, "b", 4, clock, log, max_tokens=1)
    scheduler.add(long)
    drain(scheduler)
    assert log == [
        "join:1",
        "token:1",
        *["slice:2", "token:1"] * 3,
        "slice:2",
        "join:2",
        "token:1",
        "token:2",
        "token:1",
    ]
    # The longest wait of the running stream: one slice and one decode step (of two
    # streams: the last slice's step decodes the newcomer's first token too).
    assert scheduler.longest_pause() == pytest.approx(SLICE + 2 * STEP)


def test_slices_may_take_longer_when_many_streams_decode_in_turn(make, clock, log):
    scheduler, _ = make()
    for req_id in range(1, 9):
        scheduler.add(seq(req_id, str(req_id), 0, clock, log, max_tokens=100))
    list(scheduler.step())  # 8 streams, one token each: a step of 8 x STEP
    long = seq(9, "late", 3, clock, log, max_tokens=1)
    scheduler.add(long)
    list(scheduler.step())
    assert long.budgets == [pytest.approx(1.5 * 8 * STEP)]  # 1.5 decode steps: 0.6 s
    assert scheduler.slice_budget() == pytest.approx(1.5 * 8 * STEP)
    for req_id in range(1, 9):
        scheduler.remove(req_id)
    list(scheduler.step())  # its next slice: nothing decodes any more
    assert scheduler.slice_budget() == SLICE_SECONDS


def test_callers_take_turns_slice_by_slice_first_come_first_served_within_one(make, clock, log):
    scheduler, _ = make()
    for req_id, caller in ((1, "hog"), (2, "hog"), (3, "other")):
        scheduler.add(seq(req_id, caller, 2, clock, log, max_tokens=1))
    drain(scheduler)
    slices = [entry for entry in log if entry.startswith("slice")]
    assert slices == ["slice:1", "slice:3", "slice:1", "slice:3", "slice:2", "slice:2"]


def test_a_sequence_with_nothing_to_prefill_joins_at_once_and_leaves_when_done(make, clock, log):
    scheduler, decoder = make()
    scheduler.add(seq(1, "a", 0, clock, log, max_tokens=2))
    assert log == ["join:1"] and scheduler.stats().batch == 1
    outcomes = drain(scheduler)
    assert outcomes == [(1, ("t1", False)), (1, ("t2", True))]
    assert decoder.left == [1] and not scheduler.active
    assert scheduler.stats().kv_reserved_tokens == 0


def test_sequences_join_and_leave_a_running_batch_between_steps(make, clock, log):
    scheduler, decoder = make()
    scheduler.add(seq(1, "a", 0, clock, log, max_tokens=4))
    list(scheduler.step())
    scheduler.add(seq(2, "b", 0, clock, log, max_tokens=1))
    step = [(s.req_id, o) for s, o in scheduler.step()]
    assert step == [(1, ("t2", False)), (2, ("t1", True))]
    assert [s.req_id for s in decoder.joined] == [1] and decoder.left == [2]


def test_cancel_mid_prefill_stops_its_slices_and_frees_its_reservation(make, clock, log):
    scheduler, decoder = make(budget=150)
    long = seq(1, "a", 10, clock, log, kv_tokens=100)
    scheduler.add(long)
    queued = seq(2, "b", 0, clock, log, kv_tokens=100)
    scheduler.add(queued)  # does not fit beside the long one: waits
    list(scheduler.step())
    list(scheduler.step())
    assert scheduler.stats().waiting == 1
    assert scheduler.remove(1) is long
    assert long.slices == 8 and 1 not in decoder.left  # it never joined the decoder
    assert "join:2" in log and scheduler.stats().kv_reserved_tokens == 100
    drain(scheduler)
    assert long.slices == 8, "no slice after the cancel"
    assert scheduler.remove(1) is None  # a second cancel is harmless


def test_cancel_while_decoding_makes_it_leave_the_decoder(make, clock, log):
    scheduler, decoder = make()
    scheduler.add(seq(1, "a", 0, clock, log, max_tokens=50))
    list(scheduler.step())
    assert scheduler.remove(1) is not None
    assert decoder.left == [1] and not scheduler.active


def test_a_request_larger_than_the_whole_kv_budget_is_refused(make, clock, log):
    scheduler, _ = make(budget=1000)
    with pytest.raises(KVBudgetExceeded, match="1001 tokens"):
        scheduler.add(seq(1, "a", 0, clock, log, kv_tokens=1001))
    assert not scheduler.active and log == []


def test_a_request_that_overflows_the_budget_waits_then_runs(make, clock, log):
    scheduler, _ = make(budget=1000)
    scheduler.add(seq(1, "a", 0, clock, log, kv_tokens=700, max_tokens=2))
    scheduler.add(seq(2, "b", 0, clock, log, kv_tokens=400, max_tokens=1))
    small = seq(3, "c", 0, clock, log, kv_tokens=100, max_tokens=1)
    scheduler.add(small)  # fits, but it does not overtake the one waiting before it
    stats = scheduler.stats()
    assert (stats.batch, stats.waiting, stats.kv_reserved_tokens) == (1, 2, 700)
    outcomes = drain(scheduler)
    assert [r for r, (_, done) in outcomes if done] == [1, 2, 3]
    assert log.index("join:2") > log.index("token:1") and log.index("join:3") > log.index("join:2")
    assert scheduler.stats().kv_reserved_tokens == 0


def test_a_failing_slice_ends_its_own_sequence_only(make, clock, log):
    scheduler, _ = make()
    scheduler.add(seq(1, "a", 0, clock, log, max_tokens=3))
    bad = seq(2, "b", 3, clock, log, fail_slice=True)
    scheduler.add(bad)
    outcomes = drain(scheduler)
    failures = [(r, o) for r, o in outcomes if isinstance(o, BaseException)]
    assert [r for r, _ in failures] == [2]
    assert [r for r, o in outcomes if not isinstance(o, BaseException) and o[1]] == [1]
    assert scheduler.stats().kv_reserved_tokens == 0


def test_stats_count_the_batch_the_prefills_and_the_reservations(make, clock, log):
    scheduler, _ = make(budget=500)
    scheduler.add(seq(1, "a", 0, clock, log, kv_tokens=200, max_tokens=9))
    scheduler.add(seq(2, "b", 5, clock, log, kv_tokens=200))
    scheduler.add(seq(3, "c", 5, clock, log, kv_tokens=200))
    stats = scheduler.stats()
    assert (stats.decoding, stats.batch, stats.prefilling, stats.waiting) == ("batched", 1, 1, 1)
    assert (stats.kv_budget_tokens, stats.kv_reserved_tokens) == (500, 400)
    assert [s.req_id for s in scheduler.prefilling()] == [2]


def test_the_longest_pause_is_kept_for_a_minute(make, clock, log):
    scheduler, _ = make()
    scheduler.add(seq(1, "a", 0, clock, log, max_tokens=1000))
    list(scheduler.step())
    clock.now += 3.0  # a stall of three seconds
    list(scheduler.step())
    assert scheduler.longest_pause() == pytest.approx(3.0 + STEP)
    for _ in range(5):
        list(scheduler.step())
    assert scheduler.longest_pause() == pytest.approx(3.0 + STEP)
    clock.now += 61.0
    list(scheduler.step())  # the newest gap is 61 s: itself the longest
    assert scheduler.longest_pause() == pytest.approx(61.0 + STEP)
    list(scheduler.step())
    clock.now += 60.5  # that gap now lies outside the window; only recent ones count
    assert scheduler.longest_pause() == pytest.approx(0.0)


def test_a_batch_costs_its_rows_times_the_longest_and_turns_cost_their_sum():
    assert kv_cost("batched", [3000, 100, 0]) == 6000
    assert kv_cost("interleaved", [3000, 100, 0]) == 3100
    assert kv_cost("batched", []) == kv_cost("interleaved", [0]) == 0


def test_a_short_request_waits_beside_a_long_one_in_a_batch(make, clock, log):
    scheduler, decoder = make(budget=1000)
    scheduler.add(seq(1, "a", 0, clock, log, kv_tokens=600, max_tokens=2))
    scheduler.add(seq(2, "b", 0, clock, log, kv_tokens=100, max_tokens=1))
    assert scheduler.stats().waiting == 1  # 2 x 600 > 1000 in one batch
    decoder.mode = "interleaved"
    scheduler.remove(2)
    scheduler.add(seq(3, "b", 0, clock, log, kv_tokens=100, max_tokens=1))
    assert scheduler.stats().waiting == 0  # 700 when decoded in turn
