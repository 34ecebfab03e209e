"""Chunked prefill in ``ModelRunner``, on a real tiny model driven by the worker's
scheduler: a long prompt is fed in slices, one per step, so other generations keep
decoding between them.

The pace is fixed here (``FixedPace``), so the number of slices does not depend
on the machine's speed; everything runs on the test's one thread.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from engine.generation import Generation, ModelRunner
from engine.prefill import PrefillPace
from engine.protocol import Generate, SamplingParams
from tests.support import stepping

_ids = itertools.count(1)
GREEDY = SamplingParams(max_tokens=6, temperature=0.0, logit_bias={2: -100.0})


class FixedPace(PrefillPace):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def slice_tokens(self, budget: float | None = None) -> int:
        return self.size


@pytest.fixture(scope="module")
def runner(tiny_models_dir: Path) -> ModelRunner:
    return ModelRunner("tiny-a", tiny_models_dir / "tiny-a", prompt_cache_size=4)


def start(runner: ModelRunner, tokens: list[int], partition: str = "p") -> Generation:
    request = Generate(next(_ids), GREEDY, prompt="x", tokens=tuple(tokens), partition=partition)
    return runner.start(request)


def run(generation: Generation) -> tuple[int, list[int]]:
    """Steps that released nothing (prefill slices) and the tokens generated."""
    silent, _, _ = stepping.run(generation.runner, generation)
    return silent, stepping.tokens_of(generation)


def prompt(n: int, seed: int = 0) -> list[int]:
    return [3 + (i * 7 + seed) % 250 for i in range(n)]


def test_a_long_prompt_is_prefilled_one_slice_per_step(runner):
    runner.pace = FixedPace(100)
    generation = start(runner, prompt(1001), partition="slices")
    silent, generated = run(generation)
    assert generation.prefill.slices == 10  # 1,000 tokens in slices of 100
    assert silent == 9  # the step of the last slice decodes the first token (the 1,001st)
    assert len(generated) == 6


def test_sliced_prefill_gives_the_same_greedy_output(runner):
    runner.pace = FixedPace(4096)
    _, whole = run(start(runner, prompt(900, seed=1), partition="whole"))
    runner.pace = FixedPace(37)
    _, sliced = run(start(runner, prompt(900, seed=1), partition="sliced"))
    assert sliced == whole


def test_running_streams_decode_between_the_slices_of_a_long_prompt(runner):
    runner.pace = FixedPace(64)
    running = start(runner, prompt(20, seed=2), partition="a")
    long = start(runner, prompt(1200, seed=3), partition="b")
    scheduler = stepping.scheduler(runner)
    scheduler.add(running)
    scheduler.add(long)
    steps = 0
    while running.req_id in scheduler:
        outputs = [g for g, outcome in scheduler.step() if g is running]
        assert len(outputs) == 1, "the running stream gets a token in every step"
        steps += 1
    # Its one slice came first, then one slice of the long prompt per step.
    assert steps == 6 and long.prefill.slices == 5 and not long.prefilled
    while scheduler.active:
        list(scheduler.step())
    assert long.prefill.slices == 19  # 1,199 tokens in slices of 64
    assert long.completion_tokens == 6


def test_cancel_mid_prefill_ends_at_once_and_caches_nothing(runner):
    runner.pace = FixedPace(50)
    generation = start(runner, prompt(800, seed=4), partition="cancel")
    scheduler = stepping.scheduler(runner)
    scheduler.add(generation)
    assert list(scheduler.step()) == [] and list(scheduler.step()) == []
    assert scheduler.remove(generation.req_id) is generation and not scheduler.active
    end = generation.finish("cancelled")
    assert (end.finish_reason, end.completion_tokens) == ("cancelled", 0)
    assert runner.prompt_cache.entries("cancel") == 0


def test_the_prompt_cache_still_skips_the_shared_prefix(runner):
    runner.pace = FixedPace(100)
    shared = prompt(600, seed=5)
    run(start(runner, shared + [9, 10], partition="shared"))
    again = start(runner, shared + [11, 12, 13], partition="shared")
    assert again.started.cached_tokens >= 600
    silent, _ = run(again)
    assert silent <= 1  # only the few new tokens: one slice at most
