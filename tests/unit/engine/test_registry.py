"""Registry rules, stepped through with fake workers and a fake clock (no sleeps).

The fixtures (``make``, ``clock``, ``workers``, ``settle``) are in this
directory's ``conftest.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import (
    InsufficientMemory,
    ModelLoadFailed,
    ModelNotReady,
    RequestCancelled,
    ServerBusy,
    WorkerCrashed,
)
from engine.protocol import SamplingParams
from engine.registry import ModelState

pytestmark = pytest.mark.anyio

GB = 1_000_000_000


async def test_concurrent_requests_for_an_absent_model_share_one_load(make, workers, settle):
    workers.load_gate.clear()
    registry = make()
    acquires = [asyncio.create_task(registry.acquire("a", f"k{i}")) for i in range(4)]
    await settle()
    assert registry.status("a").state is ModelState.LOADING
    assert registry.status("a").queued == 4
    workers.load_gate.set()
    leases = await asyncio.gather(*acquires)
    assert workers.loads == ["a"]
    assert len({id(lease.worker) for lease in leases}) == 1
    assert registry.status("a").leases == 4
    for lease in leases:
        registry.release(lease)
        registry.release(lease)  # releasing twice is harmless
    assert registry.status("a").leases == 0


async def test_request_waits_at_most_load_wait_then_model_not_ready(make, workers, settle):
    workers.load_gate.clear()
    registry = make(load_wait=0.01)
    with pytest.raises(ModelNotReady, match="loading") as waited:
        await registry.acquire("a")
    assert waited.value.retry_after >= 1
    assert registry.status("a").state is ModelState.LOADING  # the load goes on
    assert registry.status("a").queued == 0  # the timed-out request left the queue
    workers.load_gate.set()
    await settle()
    assert registry.status("a").state is ModelState.READY
    assert workers.loads == ["a"]


async def test_model_over_the_budget_is_refused_before_anything_is_unloaded(make):
    registry = make({"a": 4, "huge": 12}, budget=10)
    lease = await registry.acquire("a")
    registry.release(lease)
    with pytest.raises(InsufficientMemory) as refused:
        await registry.acquire("huge")
    assert refused.value.need > refused.value.budget == 10 * GB
    assert "budget" in str(refused.value)
    assert registry.status("a").state is ModelState.READY


async def test_pinned_models_count_against_what_can_ever_fit(make):
    registry = make({"p": 6, "b": 5}, budget=10, pinned=("p",))
    registry.release(await registry.acquire("p"))
    with pytest.raises(InsufficientMemory) as refused:
        await registry.acquire("b")
    assert refused.value.pinned >= 6 * GB
    assert registry.status("p").state is ModelState.READY


async def test_idle_least_recently_used_model_is_evicted_to_make_room(make, clock, workers):
    registry = make(budget=9)  # two 4 GB models fit, not three
    for name in ("a", "b"):
        registry.release(await registry.acquire(name))
        clock.advance(1)
    registry.release(await registry.acquire("a"))  # a is now the most recently used
    clock.advance(1)
    registry.release(await registry.acquire("c"))
    assert registry.status("b").state is ModelState.ABSENT
    assert registry.status("a").state is ModelState.READY
    assert registry.status("c").state is ModelState.READY
    assert registry.memory_used <= 9 * GB


async def test_pinned_model_is_never_evicted(make, clock):
    registry = make(budget=9, pinned=("a",))
    registry.release(await registry.acquire("a"))
    clock.advance(1)
    registry.release(await registry.acquire("b"))
    clock.advance(1)
    registry.release(await registry.acquire("c"))
    assert registry.status("a").state is ModelState.READY
    assert registry.status("b").state is ModelState.ABSENT


async def test_busy_model_is_drained_then_replaced_without_losing_its_request(
    make, workers, clock, settle
):
    registry = make(max_loaded_models=1)
    lease_a = await registry.acquire("a")
    workers.token_gate.clear()
    stream = lease_a.generate(SamplingParams(max_tokens=3))
    assert (await anext(stream)).__class__.__name__ == "Started"
    want_b = asyncio.create_task(registry.acquire("b"))
    await settle()
    assert registry.status("a").state is ModelState.DRAINING
    assert "a" in registry.status("b").waiting[0].reason
    # While draining, new requests for a wait instead of being admitted.
    clock.advance(1)
    want_a = asyncio.create_task(registry.acquire("a"))
    await settle()
    assert not want_a.done()
    # The in-flight request finishes completely.
    workers.token_gate.set()
    text = [e.text async for e in stream if hasattr(e, "text")]
    assert "".join(text) == "Hello, world"
    registry.release(lease_a)
    lease_b = await want_b
    assert registry.status("a").state is ModelState.ABSENT
    assert workers.spawned[0].stopped
    assert lease_b.worker is workers.spawned[1]
    registry.release(lease_b)
    registry.release(await want_a)  # a comes back once b may go


async def test_drain_timeout_cancels_the_rest_with_a_clean_error(make, clock, workers, settle):
    registry = make(max_loaded_models=1, drain_timeout=30)
    lease = await registry.acquire("a")
    workers.token_gate.clear()
    stream = lease.generate(SamplingParams(max_tokens=3))
    await anext(stream)
    want_b = asyncio.create_task(registry.acquire("b"))
    await settle()
    clock.advance(31)
    registry.check_deadlines()
    workers.token_gate.set()
    with pytest.raises(RequestCancelled, match="drain timeout"):
        async for _ in stream:
            pass
    registry.release(lease)
    registry.release(await want_b)
    assert registry.status("a").state is ModelState.ABSENT


async def test_failed_load_reports_reason_and_next_request_retries(make, workers):
    workers.fail_loads.add("a")
    registry = make()
    with pytest.raises(ModelLoadFailed, match="corrupt weights"):
        await registry.acquire("a")
    status = registry.status("a")
    assert status.state is ModelState.FAILED
    assert "corrupt weights" in (status.error or "")
    assert registry.memory_used == 0
    workers.fail_loads.clear()
    registry.release(await registry.acquire("a"))
    assert registry.status("a").state is ModelState.READY


async def test_stalled_load_is_failed_after_load_timeout_and_its_worker_killed(
    make, clock, workers, settle
):
    workers.load_gate.clear()
    registry = make(load_timeout=60, load_wait=100)
    want = asyncio.create_task(registry.acquire("a"))
    await settle()
    clock.advance(61)
    registry.check_deadlines()
    with pytest.raises(ModelLoadFailed, match="no progress"):
        await want
    assert workers.spawned[0].killed
    assert registry.status("a").state is ModelState.FAILED


async def test_worker_crash_mid_stream_fails_the_request_and_next_request_reloads(make, workers):
    registry = make()
    lease = await registry.acquire("a")
    workers.token_gate.clear()
    stream = lease.generate(SamplingParams(max_tokens=3))
    await anext(stream)
    workers.spawned[0].die()
    workers.token_gate.set()
    with pytest.raises(WorkerCrashed):
        async for _ in stream:
            pass
    registry.release(lease)
    assert registry.status("a").state is ModelState.FAILED
    assert registry.status("a").crashed  # the gateway treats its reload as recovery
    async with registry.lease("a") as again:
        assert again.worker is workers.spawned[1]
    assert not registry.status("a").crashed


async def test_keep_alive_unloads_an_idle_model_and_pinned_or_minus_one_never(make, clock, settle):
    registry = make({"a": 1, "b": 1, "p": 1}, pinned=("p",), keep_alive={"b": -1})
    for name in ("a", "b", "p"):
        registry.release(await registry.acquire(name))
    clock.advance(599)
    registry.check_deadlines()
    await settle()
    assert registry.status("a").state is ModelState.READY
    clock.advance(2)
    registry.check_deadlines()
    await settle()
    assert registry.status("a").state is ModelState.ABSENT
    assert registry.status("b").state is ModelState.READY
    assert registry.status("p").state is ModelState.READY


async def test_min_residency_delays_eviction_and_batches_swaps(make, clock, workers, settle):
    registry = make(max_loaded_models=1, min_residency=10)
    registry.release(await registry.acquire("a"))
    want_b = asyncio.create_task(registry.acquire("b"))
    await settle()
    assert registry.status("a").state is ModelState.READY
    assert "minimum residency" in registry.status("b").waiting[0].reason
    # More requests for a keep being served meanwhile: no swap per request.
    for _ in range(3):
        registry.release(await registry.acquire("a"))
    clock.advance(10)
    registry.check_deadlines()
    lease_b = await want_b
    assert workers.loads == ["a", "b"]
    registry.release(lease_b)


async def test_saturated_model_serves_waiting_callers_round_robin(make, settle):
    registry = make(max_concurrent=1)
    first = await registry.acquire("a", "burst")
    order: list[str] = []

    async def want(caller: str) -> None:
        lease = await registry.acquire("a", caller)
        order.append(caller)
        registry.release(lease)

    tasks = [asyncio.create_task(want("burst")) for _ in range(3)]
    await settle()
    tasks += [asyncio.create_task(want("alice")), asyncio.create_task(want("bob"))]
    await settle()
    registry.release(first)
    await asyncio.gather(*tasks)
    assert order[:3] == ["burst", "alice", "bob"]


async def test_full_queue_answers_server_busy_with_retry_after(make, workers, settle):
    workers.load_gate.clear()
    registry = make(queue_per_model=2, load_wait=100)
    waiting = [asyncio.create_task(registry.acquire("a")) for _ in range(2)]
    await settle()
    with pytest.raises(ServerBusy) as busy:
        await registry.acquire("a")
    assert busy.value.retry_after >= 1
    workers.load_gate.set()
    for lease in await asyncio.gather(*waiting):
        registry.release(lease)


async def test_no_double_load_when_requests_race_with_an_unload(make, workers, settle):
    registry = make({"a": 4}, max_concurrent=8)
    registry.release(await registry.acquire("a"))
    registry.request_unload("a")
    racers = [asyncio.create_task(registry.acquire("a")) for _ in range(5)]
    await settle()
    leases = await asyncio.gather(*racers)
    assert workers.loads == ["a", "a"]
    assert len({id(lease.worker) for lease in leases}) == 1
    for lease in leases:
        registry.release(lease)


async def test_client_giving_up_while_queued_leaves_no_trace(make, workers, settle):
    workers.load_gate.clear()
    registry = make(load_wait=100)
    waiting = asyncio.create_task(registry.acquire("a"))
    await settle()
    waiting.cancel()
    await settle()
    assert registry.status("a").queued == 0
    workers.load_gate.set()
    await settle()
    assert registry.status("a").leases == 0


async def test_admin_can_cancel_a_load_in_progress(make, workers, settle):
    workers.load_gate.clear()
    registry = make(load_wait=100)
    want = asyncio.create_task(registry.acquire("a"))
    await settle()
    registry.request_unload("a")
    with pytest.raises(ModelLoadFailed, match="cancelled by an operator"):
        await want
    assert registry.status("a").state is ModelState.FAILED
    assert workers.spawned[0].killed
    workers.load_gate.set()
    registry.release(await registry.acquire("a"))


async def test_spare_worker_is_used_for_the_next_load(make, workers, settle):
    registry = make(spare_worker=True)
    await registry.start()
    await settle()
    assert len(workers.spawned) == 1
    spare = workers.spawned[0]
    registry.release(await registry.acquire("a"))
    assert registry.status("a").state is ModelState.READY
    assert spare.loaded == "a"
    await settle()
    assert len(workers.spawned) == 2  # a new spare is kept ready
    await registry.close()
    assert all(w.stopped for w in workers.spawned)


async def test_close_stops_every_worker_and_refuses_new_requests(make, workers):
    registry = make()
    for model in ("a", "b"):
        registry.release(await registry.acquire(model))
    await registry.close()
    assert all(w.stopped for w in workers.spawned)
    with pytest.raises(ModelLoadFailed):
        await registry.acquire("a")


async def test_registry_reports_wedged_when_the_watchdog_stops_ticking(make, clock):
    registry = make(tick=0.01)
    await registry.start()
    await asyncio.sleep(0.05)
    assert not registry.wedged
    clock.advance(60)  # the watchdog has not run for a minute of registry time
    assert registry.wedged
    await asyncio.sleep(0.05)
    assert not registry.wedged
    await registry.close()
