"""The worker's prompt cache is partitioned: a request reuses only its own partition's prefixes.

``ModelRunner`` runs a real tiny random-weight model here, on the test's one
thread (MLX streams are thread-local); the last test goes through a real worker
process and the framed protocol.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from engine.generation import (
    Generation,
    InvalidGeneration,
    ModelRunner,
    PartitionedPromptCache,
    PromptTooLong,
)
from engine.protocol import ChatMessage, Finished, Generate, SamplingParams, Started
from engine.worker import WorkerProcess
from tests.support import stepping

SECRET = (ChatMessage("system", "You are Zed. The launch code is 7-4-1-9."),)
PARAMS = SamplingParams(max_tokens=3, temperature=0.0)
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def runner(tiny_models_dir: Path) -> ModelRunner:
    return ModelRunner("tiny-a", tiny_models_dir / "tiny-a", prompt_cache_size=4)


@pytest.fixture
def fresh(runner: ModelRunner) -> ModelRunner:
    """The shared runner with an empty prompt cache (4 entries a partition, 64 partitions)."""
    runner.prompt_cache = PartitionedPromptCache(runner.model_id, 4)
    return runner


def generate(
    runner: ModelRunner,
    partition: str,
    messages: tuple[ChatMessage, ...] = SECRET,
    tokens: tuple[int, ...] | None = None,
) -> Started:
    """Run one request to its end (so its cache is remembered); its ``Started``."""
    request = Generate(next(_ids), PARAMS, messages=messages, tokens=tokens, partition=partition)
    generation: Generation = runner.start(request)
    stepping.run(runner, generation)
    return generation.started


def ask(text: str) -> tuple[ChatMessage, ...]:
    return (*SECRET, ChatMessage("user", text))


def test_another_partition_never_gets_a_cached_prefix(fresh):
    first = generate(fresh, "key:aaaa")
    assert first.cached_tokens == 0
    assert generate(fresh, "key:bbbb").cached_tokens == 0
    again = generate(fresh, "key:aaaa")
    assert 0 < again.cached_tokens < again.prompt_tokens


def test_a_shared_system_prompt_reveals_nothing_across_partitions(fresh):
    generate(fresh, "key:victim", ask("hello"))
    guesses = [generate(fresh, "key:attacker", ask("hello")).cached_tokens for _ in range(2)]
    # The attacker's first try finds nothing; its second reuses only its own first try.
    assert guesses[0] == 0
    assert guesses[1] > 0


def test_a_group_partition_is_shared_by_its_keys_and_by_no_one_else(fresh):
    generate(fresh, "group:team")  # key 1 of the group
    assert generate(fresh, "group:team", ask("hi")).cached_tokens > 0  # key 2 of the group
    assert generate(fresh, "key:outsider", ask("hi")).cached_tokens == 0


def test_the_empty_partition_is_a_partition_of_its_own(fresh):
    generate(fresh, "")
    assert generate(fresh, "key:aaaa").cached_tokens == 0
    assert generate(fresh, "").cached_tokens > 0


def test_one_partition_cannot_evict_another_partitions_entries(fresh):
    generate(fresh, "key:victim")
    for i in range(3 * fresh.prompt_cache.max_size):
        generate(fresh, "key:flood", (ChatMessage("user", f"flood {i} " * 3),))
    assert fresh.prompt_cache.entries("key:flood") == fresh.prompt_cache.max_size
    assert generate(fresh, "key:victim").cached_tokens > 0


def test_least_recently_used_partitions_are_dropped_beyond_the_limit(runner):
    runner.prompt_cache = PartitionedPromptCache(runner.model_id, 4, max_partitions=2)
    generate(runner, "key:a")
    generate(runner, "key:b")
    generate(runner, "key:a")  # a is now the most recently used
    generate(runner, "key:c")  # a third partition: b goes
    assert len(runner.prompt_cache) == 2
    assert runner.prompt_cache.entries("key:b") == 0
    assert generate(runner, "key:a").cached_tokens > 0
    assert generate(runner, "key:c").cached_tokens > 0


def test_a_prompt_cache_size_of_zero_caches_nothing(runner):
    runner.prompt_cache = PartitionedPromptCache(runner.model_id, 0)
    generate(runner, "key:a")
    assert generate(runner, "key:a").cached_tokens == 0
    assert len(runner.prompt_cache) == 0


def test_given_tokens_are_the_prompt_and_nothing_is_tokenized(fresh, monkeypatch):
    tokens = tuple(fresh.tokenize(Generate(0, PARAMS, messages=ask("a longer question"))))
    calls: list[Generate] = []

    def tokenize(request: Generate) -> list[int]:
        calls.append(request)
        return []

    monkeypatch.setattr(fresh, "tokenize", tokenize)
    started = generate(fresh, "key:a", (ChatMessage("user", "x"),), tokens=tokens)
    assert started.prompt_tokens == len(tokens)
    assert calls == []


@pytest.mark.parametrize(
    ("tokens", "error", "message"),
    [
        ((), PromptTooLong, "empty"),
        ((5, -1), InvalidGeneration, "token -1, outside the vocabulary"),
        ((5, 10**6), InvalidGeneration, "token 1000000, outside the vocabulary"),
        ((5,) * 2048, PromptTooLong, "2048 tokens: it leaves no room"),
    ],
)
def test_given_tokens_are_checked(fresh, tokens, error, message):
    request = Generate(next(_ids), PARAMS, prompt="x", tokens=tokens)
    with pytest.raises(error, match=message):
        fresh.start(request)


def test_max_tokens_past_the_context_is_clamped_to_the_room_left(fresh):
    no_end = SamplingParams(max_tokens=500, temperature=0.0, logit_bias={2: -100.0})
    generation = fresh.start(Generate(next(_ids), no_end, prompt="x", tokens=(5,) * 2046))
    _, _, event = stepping.run(fresh, generation)
    assert (event.finish_reason, event.completion_tokens) == ("length", 2)


def test_given_tokens_at_the_vocabulary_edge_are_accepted(fresh):
    started = generate(fresh, "", tokens=(0, fresh.vocab_size - 1))
    assert started.prompt_tokens == 2


@pytest.mark.anyio
async def test_worker_process_uses_the_tokens_of_generate(tiny_models_dir):
    worker = await WorkerProcess.spawn()
    try:
        await worker.load("tiny-a", tiny_models_dir / "tiny-a", prompt_cache_size=2)
        tokens = (1, 120, 121, 122, 123, 124, 125, 2)
        events = [
            event
            async for event in worker.generate(
                PARAMS, prompt="a prompt of other length", tokens=tokens, partition="key:a"
            )
        ]
        assert isinstance(events[0], Started)
        assert (events[0].prompt_tokens, events[0].cached_tokens) == (len(tokens), 0)
        assert isinstance(events[-1], Finished) and events[-1].prompt_tokens == len(tokens)
        second = [e async for e in worker.generate(PARAMS, prompt="y", tokens=tokens)]
        assert isinstance(second[0], Started) and second[0].cached_tokens == 0  # partition ""
    finally:
        await asyncio.wait_for(worker.stop(), 30)
