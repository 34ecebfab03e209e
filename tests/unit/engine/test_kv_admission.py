"""KV-aware admission in the registry, with fake workers (no sleeps): each lease
reserves its request's KV tokens; one that would overflow the model's KV budget
waits in the fair queue, and nothing overtakes it.

The fake models have a context of 1,024 tokens and the registry runs at most 4
requests per model, so each model's default KV budget is 4,096 tokens.
"""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import ModelNotReady

pytestmark = pytest.mark.anyio

BUDGET = 4 * 1024


async def test_the_kv_budget_is_counted_in_the_need_and_sent_to_the_worker(make, workers):
    registry = make()
    lease = await registry.acquire("a", "k1", kv_row=10)
    need = registry.need("a")
    assert need.kv_tokens == BUDGET
    assert need.kv_cache == BUDGET * need.kv_bytes_per_token > 0
    assert workers.spawned[0].load_options["kv_budget_tokens"] == BUDGET
    serving = registry.status("a").serving
    assert serving is not None
    assert (serving.kv_budget_tokens, serving.kv_reserved_tokens) == (BUDGET, 10)
    registry.release(lease)
    assert registry.status("a").serving.kv_reserved_tokens == 0


async def test_a_request_that_would_overflow_waits_and_nothing_overtakes_it(make, settle):
    registry = make()
    first = await registry.acquire("a", "k1", kv_row=3000)
    second = asyncio.create_task(registry.acquire("a", "k2", kv_row=2000))
    await settle()
    # A small request of a third caller fits, but does not overtake the waiting one.
    third = asyncio.create_task(registry.acquire("a", "k3", kv_row=100))
    await settle()
    assert not second.done() and not third.done()
    status = registry.status("a")
    assert (status.leases, status.queued) == (1, 2)
    assert "KV cache is reserved (3000 of 4096 tokens" in status.waiting[0].reason
    registry.release(first)
    leases = [await second, await third]
    assert registry.status("a").serving.kv_reserved_tokens == 2100
    for lease in leases:
        registry.release(lease)


async def test_a_waiting_request_times_out_without_holding_a_reservation(make, settle):
    registry = make(load_wait=0.05)
    first = await registry.acquire("a", "k1", kv_row=BUDGET)
    with pytest.raises(ModelNotReady, match="KV cache"):
        await registry.acquire("a", "k2", kv_row=1)
    status = registry.status("a")
    assert (status.queued, status.serving.kv_reserved_tokens) == (0, BUDGET)
    registry.release(first)
    lease = await registry.acquire("a", "k2", kv_row=1)
    assert registry.status("a").serving.kv_reserved_tokens == 1
    registry.release(lease)


async def test_a_cancelled_waiter_reserves_nothing(make, settle):
    registry = make()
    first = await registry.acquire("a", "k1", kv_row=4000)
    waiting = asyncio.create_task(registry.acquire("a", "k2", kv_row=500))
    await settle()
    waiting.cancel()
    await settle()
    assert registry.status("a").queued == 0
    registry.release(first)
    assert registry.status("a").serving.kv_reserved_tokens == 0


async def test_one_request_larger_than_the_budget_runs_alone(make, settle):
    """The pipeline clamps max_tokens to the budget; a request it could not count
    (no tokenizer) may still ask for more: it runs alone, and the worker, which
    counts exactly, refuses what cannot fit."""
    registry = make()
    big = await registry.acquire("a", "k1", kv_row=BUDGET + 1)
    other = asyncio.create_task(registry.acquire("a", "k2", kv_row=1))
    await settle()
    assert not other.done()
    registry.release(big)
    registry.release(await other)


async def test_a_batched_model_counts_every_row_at_the_longest(make, workers, settle):
    """One batch pads its rows to the longest: two requests of 3,000 and 100 tokens
    take 6,000 there (over the 4,096 budget), 3,100 when decoded in turn."""
    workers.decoding = "batched"
    registry = make()
    long = await registry.acquire("a", "k1", kv_row=3000)
    short = asyncio.create_task(registry.acquire("a", "k2", kv_row=100))
    await settle()
    assert not short.done()
    assert registry.status("a").serving.decoding == "batched"
    registry.release(long)
    lease = await short
    assert registry.status("a").serving.kv_reserved_tokens == 100
    two = await registry.acquire("a", "k3", kv_row=100, kv_choices=2)
    assert registry.status("a").serving.kv_reserved_tokens == 300  # three rows of 100
    registry.release(lease)
    registry.release(two)
