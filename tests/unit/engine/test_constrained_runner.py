"""Constraints, forced calls and logprobs in ``ModelRunner``, on a real tiny model.

Random weights write anything; under a constraint they must still write JSON
that validates.  Everything runs on the test's one thread (MLX streams are
thread-local).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import jsonschema
import pytest

from engine.generation import Generation, InvalidGeneration, ModelRunner
from engine.protocol import (
    ChatMessage,
    Constraint,
    Delta,
    Finished,
    Generate,
    OutputSpec,
    SamplingParams,
    ToolSpec,
)
from tests.support import stepping

HELLO = (ChatMessage("user", "hello"),)
_ids = itertools.count(1)


def schema(values: list[str]) -> dict:
    return {
        "type": "object",
        "properties": {"pick": {"enum": values}, "n": {"type": "integer", "maximum": 9}},
        "required": ["pick", "n"],
        "additionalProperties": False,
    }


@pytest.fixture(scope="module")
def runner(tiny_models_dir: Path) -> ModelRunner:
    return ModelRunner("tiny-a", tiny_models_dir / "tiny-a", prompt_cache_size=4)


def start(runner: ModelRunner, output: OutputSpec, **params) -> Generation:
    sampling = SamplingParams(**({"max_tokens": 60, "temperature": 0.0} | params))
    return runner.start(Generate(next(_ids), sampling, messages=HELLO, output=output))


def run(generation: Generation) -> tuple[list[Delta], Finished]:
    _, deltas, end = stepping.run(generation.runner, generation)
    return deltas, end


def text_of(deltas: list[Delta], end: Finished) -> str:
    return "".join(d.text for d in deltas) + end.text


def json_schema_output(values: list[str]) -> OutputSpec:
    return OutputSpec(constraint=Constraint("json_schema", schema=json.dumps(schema(values))))


def test_a_schema_is_compiled_once_and_each_request_gets_its_own_matcher(runner):
    before = runner.guide.compiles
    outputs = [run(start(runner, json_schema_output(["a", "b"]), seed=s)) for s in range(2)]
    assert runner.guide.compiles == before + 1
    run(start(runner, json_schema_output(["c"])))
    assert runner.guide.compiles == before + 2
    for deltas, end in outputs:
        assert end.finish_reason == "stop"
        jsonschema.validate(json.loads(text_of(deltas, end)), schema(["a", "b"]))


def test_interleaved_constrained_generations_keep_their_own_grammar(runner):
    for mode in ("interleaved", "batched"):
        first = start(runner, json_schema_output(["x1"]), temperature=1.0, seed=3)
        second = start(runner, json_schema_output(["y2"]), temperature=1.0, seed=4)
        results = stepping.run_all(stepping.scheduler(runner, mode), first, second)
        for generation, pick in ((first, "x1"), (second, "y2")):
            _, deltas, end = results[generation.req_id]
            assert end.finish_reason == "stop"
            assert json.loads(text_of(deltas, end))["pick"] == pick


def test_a_forced_call_is_reported_as_a_tool_call(runner):
    tool = ToolSpec("lookup", parameters=json.dumps(schema(["q"])))
    forced = Constraint("tool_call", tools=("lookup",))
    output = OutputSpec(tools=(tool,), tool_format="json_tools", constraint=forced)
    deltas, end = run(start(runner, output))
    assert end.finish_reason == "tool_calls" and end.tool_error is None
    pieces = [c for d in deltas for c in d.calls] + list(end.calls)
    assert pieces[0].name == "lookup" and pieces[0].id
    arguments = "".join(p.arguments for p in pieces)
    jsonschema.validate(json.loads(arguments), schema(["q"]))
    assert text_of(deltas, end) == "", "a forced call writes no answer text"


def test_a_stop_string_ends_a_constrained_generation(runner):
    deltas, end = run(start(runner, json_schema_output(["stop-here"]), stop=("stop-",)))
    assert end.finish_reason == "stop" and end.stop_sequence == "stop-"
    assert "stop-" not in text_of(deltas, end)


def test_a_cancelled_constrained_generation_ends_at_once(runner):
    generation = start(runner, json_schema_output(["a"]))
    scheduler = stepping.scheduler(runner)
    scheduler.add(generation)
    list(scheduler.step())
    scheduler.remove(generation.req_id)
    end = generation.finish("cancelled")
    assert end.finish_reason == "cancelled"
    # The runner is free for the next one.
    _, after = run(start(runner, json_schema_output(["a"])))
    assert after.finish_reason == "stop"


def test_an_unenforceable_constraint_is_refused_at_start(runner):
    bad = OutputSpec(constraint=Constraint("json_schema", schema='{"type": "object", "if": {}}'))
    with pytest.raises(InvalidGeneration, match="if"):
        start(runner, bad)


def test_logprobs_are_the_sampled_distribution_with_sorted_alternatives(runner):
    deltas, end = run(start(runner, OutputSpec(), max_tokens=5, logprobs=4))
    tokens = [t for d in deltas for t in d.logprobs] + list(end.logprobs)
    assert end.completion_tokens - 1 <= len(tokens) <= end.completion_tokens  # no end of turn
    for t in tokens:
        assert t.logprob <= 0
        assert len(t.top) == 4
        assert [a.logprob for a in t.top] == sorted((a.logprob for a in t.top), reverse=True)
        assert t.top[0].token == t.token, "greedy picks the most likely token"
    assert sum(math.exp(a.logprob) for a in tokens[0].top) <= 1.0 + 1e-4


def test_logprobs_reflect_logit_bias_and_the_constraint_mask(runner):
    biased = run(start(runner, OutputSpec(), max_tokens=2, logprobs=1, logit_bias={65: 100.0}))
    tokens = [t for d in biased[0] for t in d.logprobs] + list(biased[1].logprobs)
    assert all(t.token_id == 65 and t.logprob > -1e-3 for t in tokens)
    deltas, end = run(start(runner, json_schema_output(["a"]), logprobs=2))
    first = ([t for d in deltas for t in d.logprobs] + list(end.logprobs))[0]
    assert first.token == "{" and first.logprob > -1e-3, "only `{` can start the object"
