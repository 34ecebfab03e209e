"""The batched decoder on a real tiny model: requests that join and leave a running
batch, stop strings inside a batch, and a batch that drops a request on its own."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from engine.generation import Generation, ModelRunner
from engine.protocol import Finished, Generate, SamplingParams
from tests.support import stepping

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def runner(tiny_models_dir: Path) -> ModelRunner:
    return ModelRunner("tiny-a", tiny_models_dir / "tiny-a", prompt_cache_size=4)


def start(runner: ModelRunner, seed: int, max_tokens: int = 12, **params) -> Generation:
    tokens = tuple(3 + (i * 7 + seed) % 250 for i in range(20 + seed * 9))
    sampling = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, logit_bias={2: -100.0}, **params
    )
    return runner.start(Generate(next(_ids), sampling, prompt="x", tokens=tokens, partition="b"))


def test_a_request_joining_a_running_batch_gets_what_it_gets_alone(runner):
    alone = start(runner, 1)
    stepping.run(runner, alone)
    scheduler = stepping.scheduler(runner, "batched")
    first = start(runner, 2, max_tokens=30)
    scheduler.add(first)
    for _ in range(5):
        list(scheduler.step())
    late = start(runner, 1)
    results = stepping.run_all(scheduler, late)
    assert stepping.tokens_of(late) == stepping.tokens_of(alone)
    assert results[late.req_id][2].finish_reason == "length"
    while scheduler.active:
        list(scheduler.step())
    assert first.completion_tokens == 30


def test_a_request_the_batch_drops_on_its_own_still_ends(runner):
    """Were the batch's count of a request's tokens to differ from the request's,
    the request must end when the batch drops it, not wait for ever."""
    scheduler = stepping.scheduler(runner, "batched")
    generation = start(runner, 3, max_tokens=4)
    scheduler.add(generation)
    ends = []
    while not generation.completion_tokens:  # until it has joined the batch
        ends += [o for g, o in scheduler.step() if isinstance(o, tuple) and o[1]]
    generation.max_tokens = 100  # the batch still stops it after 4
    for _ in range(20):
        ends += [o for g, o in scheduler.step() if isinstance(o, tuple) and o[1]]
        if not scheduler.active:
            break
    assert not scheduler.active
    assert len(ends) == 1 and isinstance(ends[0][0], Finished)
    assert ends[0][0].finish_reason == "length" and ends[0][0].completion_tokens == 4


def test_a_cancel_mid_batch_leaves_the_others_running(runner):
    scheduler = stepping.scheduler(runner, "batched")
    keep = start(runner, 4, max_tokens=10)
    gone = start(runner, 5, max_tokens=10)
    alone = start(runner, 4, max_tokens=10)
    stepping.run(runner, alone)
    scheduler.add(keep)
    scheduler.add(gone)
    for _ in range(3):
        list(scheduler.step())
    assert scheduler.remove(gone.req_id) is gone
    while scheduler.active:
        list(scheduler.step())
    assert stepping.tokens_of(keep) == stepping.tokens_of(alone)
    assert runner.prompt_cache.entries("b") >= 1  # finished and cancelled ones are kept
