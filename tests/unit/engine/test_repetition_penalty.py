"""The repetition penalty (Ollama's ``repeat_penalty``/``repeat_last_n``) on a real
tiny random-weight model, run on the test's own thread as the worker runs it.

Greedy decoding of a random-weight model repeats one token for ever, which is
exactly what a strong penalty on the recent tokens breaks.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from engine.generation import Generation, ModelRunner, repetition_penalty
from engine.protocol import Generate, SamplingParams
from tests.support import stepping

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def runner(tiny_models_dir: Path) -> ModelRunner:
    return ModelRunner("tiny-a", tiny_models_dir / "tiny-a", prompt_cache_size=4)


def start(runner: ModelRunner, **params) -> Generation:
    sampling = SamplingParams(max_tokens=16, temperature=0.0, logit_bias={2: -100.0}, **params)
    request = Generate(next(_ids), sampling, prompt="hello hello", partition=f"p{next(_ids)}")
    return runner.start(request)


def greedy(runner: ModelRunner, mode: str = "interleaved", **params) -> list[int]:
    generation = start(runner, **params)
    stepping.run(runner, generation, mode)
    return stepping.tokens_of(generation)


@pytest.mark.parametrize("mode", ["interleaved", "batched"])
def test_a_strong_repetition_penalty_changes_greedy_output(runner, mode):
    plain = greedy(runner, mode)
    penalised = greedy(runner, mode, repetition_penalty=2.0, repetition_context_size=20)
    assert len(set(plain)) == 1  # the unpenalised model repeats one token
    assert penalised != plain
    assert len(set(penalised)) > 1


@pytest.mark.parametrize(
    ("penalty", "context", "applied"),
    [
        (0.0, 20, None),  # the default: off
        (1.0, 20, None),  # multiplying by one changes nothing
        (2.0, 0, None),  # no tokens to look at (not "all of them", as mlx-lm would read it)
        (-1.0, 20, None),  # mlx-lm refuses it; the worker must not crash on it
        (math.nan, 20, None),
        (math.inf, 20, None),
        (1.1, 20, 1.1),
        (2.0, 1, 2.0),
        (2.0, 131072, 2.0),  # Ollama's -1: the gateway passes the model's whole context
    ],
)
def test_the_repetition_penalty_is_applied_only_when_it_can_change_something(
    penalty, context, applied
):
    params = SamplingParams(
        max_tokens=1, repetition_penalty=penalty, repetition_context_size=context
    )
    assert repetition_penalty(params) == applied


@pytest.mark.parametrize(("penalty", "context"), [(0.0, 20), (1.0, 20), (2.0, 0), (-1.0, 20)])
def test_a_repetition_penalty_that_is_off_adds_no_processor_and_changes_nothing(
    runner, penalty, context
):
    generation = start(runner, repetition_penalty=penalty, repetition_context_size=context)
    assert len(generation.processors) == len(start(runner).processors)
    assert greedy(runner, repetition_penalty=penalty, repetition_context_size=context) == greedy(
        runner
    )


def test_a_repetition_penalty_that_is_on_adds_one_processor(runner):
    generation = start(runner, repetition_penalty=1.5, repetition_context_size=64)
    assert len(generation.processors) == len(start(runner).processors) + 1
