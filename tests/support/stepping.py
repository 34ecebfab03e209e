"""Driving a real ``ModelRunner`` the way the worker does, on the test's own thread:
a ``WorkerScheduler`` with an interleaved or a batched decoder."""

from __future__ import annotations

from engine.decoders import BatchedDecoder, InterleavedDecoder
from engine.generation import Generation, ModelRunner
from engine.protocol import Delta, Finished
from engine.worker_scheduler import WorkerScheduler

UNBOUNDED = 1 << 62


def scheduler(
    runner: ModelRunner, mode: str = "interleaved", kv_budget: int = UNBOUNDED
) -> WorkerScheduler[Generation]:
    decoder = (
        BatchedDecoder(runner, "test") if mode == "batched" else InterleavedDecoder(runner, "test")
    )
    return WorkerScheduler(decoder, kv_budget)


def run_all(
    sched: WorkerScheduler[Generation], *generations: Generation
) -> dict[int, tuple[int, list[Delta], Finished]]:
    """Add ``generations`` and step until every one of them has finished (others the
    scheduler runs go on beside them): for each, the steps in which it released
    nothing (prefill slices included), its deltas and its end.  A failure is raised."""
    for generation in generations:
        sched.add(generation)
    silent = {g.req_id: 0 for g in generations}
    deltas: dict[int, list[Delta]] = {g.req_id: [] for g in generations}
    ends: dict[int, Finished] = {}
    while len(ends) < len(generations):
        seen = set()
        for generation, outcome in sched.step():
            if generation.req_id not in silent:
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            seen.add(generation.req_id)
            event, _ = outcome
            if isinstance(event, Finished):
                ends[generation.req_id] = event
            elif isinstance(event, Delta):
                deltas[generation.req_id].append(event)
        for req_id in silent:
            if req_id not in seen and req_id not in ends:
                silent[req_id] += 1
    return {k: (silent[k], deltas[k], ends[k]) for k in silent}


def run(
    runner: ModelRunner, generation: Generation, mode: str = "interleaved"
) -> tuple[int, list[Delta], Finished]:
    """One generation alone, to its end."""
    return run_all(scheduler(runner, mode), generation)[generation.req_id]


def tokens_of(generation: Generation) -> list[int]:
    return generation.tokens[len(generation.prompt) :]
