"""Only a request that may load (``may_load``, the key's ``load`` scope) causes a load.

An infer-only request rides along on a load someone else caused, or waits for
a drain to end, and is refused with ``LoadNotPermitted`` when its model ends up
absent; bringing back a model whose worker crashed is recovery, which any
request may cause.  Stepped through with fake workers (fixtures in conftest).
"""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import LoadNotPermitted, ModelLoadFailed, ModelNotReady
from engine.protocol import SamplingParams
from engine.registry import ModelState

pytestmark = pytest.mark.anyio


async def hold_busy(registry, workers, model_id="a"):
    """Lease ``model_id`` and leave one generation running on it (tokens held back)."""
    lease = await registry.acquire(model_id, "owner")
    workers.token_gate.clear()
    stream = lease.generate(SamplingParams(max_tokens=3))
    await anext(stream)
    return lease, stream


async def finish(registry, workers, lease, stream):
    workers.token_gate.set()
    async for _ in stream:
        pass
    registry.release(lease)


@pytest.mark.parametrize("waiters", [1, 4])
async def test_infer_only_waiters_queued_during_a_drain_are_refused_when_it_ends_not_reloaded(
    make, workers, settle, waiters
):
    registry = make(max_loaded_models=1)
    lease_a, stream = await hold_busy(registry, workers)
    want_b = asyncio.create_task(registry.acquire("b", "loader"))
    await settle()
    assert registry.status("a").state is ModelState.DRAINING
    infer = [
        asyncio.create_task(registry.acquire("a", f"infer{i}", may_load=False))
        for i in range(waiters)
    ]
    await settle()
    assert not any(task.done() for task in infer)  # draining: they wait
    assert "none here may load it again" in registry.status("a").waiting[0].reason
    await finish(registry, workers, lease_a, stream)
    for task in infer:
        with pytest.raises(LoadNotPermitted, match="may not load it"):
            await task
    registry.release(await want_b)
    await settle()
    assert workers.loads == ["a", "b"]  # no reload of a, however many waited
    assert registry.status("a").state is ModelState.ABSENT
    assert registry.status("a").queued == 0


async def test_infer_only_request_for_an_absent_model_is_refused_without_any_spawn(make, workers):
    registry = make()
    with pytest.raises(LoadNotPermitted) as refused:
        await registry.acquire("a", "infer", may_load=False)
    assert str(refused.value) == (
        "model a is not loaded and this key may not load it (the `load` scope)"
    )
    assert workers.loads == [] and workers.spawned == []
    assert registry.status("a").state is ModelState.ABSENT
    assert registry.status("a").queued == 0


async def test_infer_only_request_for_a_model_whose_load_failed_is_refused(make, workers):
    workers.fail_loads.add("a")
    registry = make()
    with pytest.raises(ModelLoadFailed):
        await registry.acquire("a", "loader")
    with pytest.raises(LoadNotPermitted):
        await registry.acquire("a", "infer", may_load=False)
    assert workers.loads == ["a"]


async def test_precheck_refuses_an_infer_only_request_for_an_absent_model(make, workers):
    registry = make()
    with pytest.raises(LoadNotPermitted):
        registry.precheck("a", "infer", may_load=False)
    registry.precheck("a", "loader")  # one that may load passes
    assert workers.spawned == []


async def test_infer_only_request_rides_along_on_another_callers_load(make, workers, settle):
    workers.load_gate.clear()
    registry = make()
    loader = asyncio.create_task(registry.acquire("a", "loader"))
    await settle()
    assert registry.status("a").state is ModelState.LOADING
    rider = asyncio.create_task(registry.acquire("a", "infer", may_load=False))
    await settle()
    assert not rider.done()
    workers.load_gate.set()
    leases = await asyncio.gather(loader, rider)
    assert workers.loads == ["a"]
    assert leases[1].worker is leases[0].worker
    for lease in leases:
        registry.release(lease)


async def test_infer_only_request_joins_a_load_that_waits_for_a_drain(make, workers, settle):
    registry = make(max_loaded_models=1)
    lease_a, stream = await hold_busy(registry, workers)
    loader = asyncio.create_task(registry.acquire("b", "loader"))
    await settle()
    assert registry.status("b").state is ModelState.ABSENT  # planned: a drains first
    rider = asyncio.create_task(registry.acquire("b", "infer", may_load=False))
    await settle()
    assert not rider.done()
    await finish(registry, workers, lease_a, stream)
    for lease in await asyncio.gather(loader, rider):
        assert lease.model_id == "b"
        registry.release(lease)
    assert workers.loads == ["a", "b"]


async def test_infer_only_requests_do_not_carry_on_a_load_whose_loader_gave_up(
    make, workers, settle
):
    registry = make(max_loaded_models=1)
    lease_a, stream = await hold_busy(registry, workers)
    loader = asyncio.create_task(registry.acquire("b", "loader"))
    await settle()
    rider = asyncio.create_task(registry.acquire("b", "infer", may_load=False))
    await settle()
    loader.cancel()  # the client that could load b is gone
    await settle()
    await finish(registry, workers, lease_a, stream)
    with pytest.raises(LoadNotPermitted):
        await rider
    await settle()
    assert workers.loads == ["a"]
    assert registry.status("b").state is ModelState.ABSENT


async def test_infer_only_request_waits_at_most_its_bound_for_another_callers_load(
    make, workers, settle
):
    workers.load_gate.clear()
    registry = make(load_wait=100)
    loader = asyncio.create_task(registry.acquire("a", "loader"))
    await settle()
    with pytest.raises(ModelNotReady, match="loading") as waited:
        await registry.acquire("a", "infer", wait=0.01, may_load=False)
    assert waited.value.retry_after >= 1
    workers.load_gate.set()
    registry.release(await loader)


async def test_crashed_worker_is_recovered_for_an_infer_only_request(make, workers):
    registry = make()
    registry.release(await registry.acquire("a", "loader"))
    workers.spawned[0].die()
    assert registry.status("a").crashed
    async with registry.lease("a", "infer", may_load=False) as again:
        assert again.worker is workers.spawned[1]
    assert workers.loads == ["a", "a"]
    assert not registry.status("a").crashed


async def test_admin_load_lets_infer_only_requests_ride_along(make, workers, settle):
    workers.load_gate.clear()
    registry = make()
    registry.request_load("a")
    await settle()
    rider = asyncio.create_task(registry.acquire("a", "infer", may_load=False))
    await settle()
    workers.load_gate.set()
    registry.release(await rider)
    assert workers.loads == ["a"]


async def test_model_an_admin_unloaded_is_not_brought_back_by_infer_only_waiters(
    make, workers, settle
):
    registry = make()
    lease, stream = await hold_busy(registry, workers)
    registry.request_unload("a")
    waiting = asyncio.create_task(registry.acquire("a", "infer", may_load=False))
    await settle()
    assert not waiting.done()
    await finish(registry, workers, lease, stream)
    with pytest.raises(LoadNotPermitted):
        await waiting
    await settle()
    assert workers.loads == ["a"]
    assert registry.status("a").state is ModelState.ABSENT


async def test_admin_unload_of_a_crashed_model_ends_its_recovery_for_infer_only_keys(make, workers):
    registry = make()
    registry.release(await registry.acquire("a", "loader"))
    workers.spawned[0].die()
    registry.request_unload("a")
    assert not registry.status("a").crashed
    with pytest.raises(LoadNotPermitted):
        await registry.acquire("a", "infer", may_load=False)
    assert workers.loads == ["a"]
