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
    """Add ``generations`` and step until every one has finished: for each request
    id, the steps in which it released nothing (prefill slices included), its
    deltas and its end.  A failure is raised."""
    for generation in generations:
        sched.add(generation)
    results: dict[int, tuple[int, list[Delta], Finished | None]] = {
        g.req_id: (0, [], None) for g in generations
    }
    while sched.active:
        seen = set()
        for generation, outcome in sched.step():
            if isinstance(outcome, BaseException):
                raise outcome
            seen.add(generation.req_id)
            event, _ = outcome
            silent, deltas, end = results[generation.req_id]
            if isinstance(event, Finished):
                end = event
            elif isinstance(event, Delta):
                deltas.append(event)
            results[generation.req_id] = (silent, deltas, end)
        for req_id, (silent, deltas, end) in results.items():
            if req_id not in seen and end is None:
                results[req_id] = (silent + 1, deltas, end)
    return {k: (s, d, e) for k, (s, d, e) in results.items() if e is not None}


def run(
    runner: ModelRunner, generation: Generation, mode: str = "interleaved"
) -> tuple[int, list[Delta], Finished]:
    """One generation alone, to its end."""
    return run_all(scheduler(runner, mode), generation)[generation.req_id]


def tokens_of(generation: Generation) -> list[int]:
    return generation.tokens[len(generation.prompt) :]
