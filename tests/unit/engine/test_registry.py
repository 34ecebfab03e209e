"""Registry rules, stepped through with a fake worker (no processes, no sleeps)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.errors import ModelLoadFailed, ModelNotReady
from engine.protocol import SamplingParams
from engine.registry import ModelState, Registry, RegistryConfig
from engine.store import ModelSpec, ModelStore
from tests.support.fake_worker import FakeWorkers

pytestmark = pytest.mark.anyio


def make_registry(workers: FakeWorkers, load_wait: float = 5.0) -> Registry:
    store = ModelStore()
    store.add(ModelSpec("a", Path("/models/a"), ("default",)))
    store.add(ModelSpec("b", Path("/models/b")))
    return Registry(store, RegistryConfig(load_wait=load_wait), spawn=workers)


async def test_concurrent_requests_for_an_absent_model_share_one_load():
    workers = FakeWorkers()
    workers.load_gate.clear()
    registry = make_registry(workers)
    acquires = [asyncio.create_task(registry.acquire("a")) for _ in range(5)]
    await asyncio.sleep(0)
    assert registry.status("a").state is ModelState.LOADING
    workers.load_gate.set()
    leases = await asyncio.gather(*acquires)
    assert workers.loads == ["a"]
    assert len({id(lease.worker) for lease in leases}) == 1
    assert registry.status("a").leases == 5
    for lease in leases:
        registry.release(lease)
    assert registry.status("a").leases == 0


async def test_request_waits_at_most_load_wait_then_model_not_ready():
    workers = FakeWorkers()
    workers.load_gate.clear()
    registry = make_registry(workers, load_wait=0.01)
    with pytest.raises(ModelNotReady) as waited:
        await registry.acquire("a")
    assert waited.value.retry_after >= 1
    assert registry.status("a").state is ModelState.LOADING  # the load goes on
    workers.load_gate.set()
    lease = await registry.acquire("a")
    assert workers.loads == ["a"]
    registry.release(lease)


async def test_failed_load_reports_reason_and_next_request_retries():
    workers = FakeWorkers()
    workers.fail_loads.add("a")
    registry = make_registry(workers)
    with pytest.raises(ModelLoadFailed, match="corrupt weights"):
        await registry.acquire("a")
    status = registry.status("a")
    assert status.state is ModelState.FAILED
    assert "corrupt weights" in (status.error or "")
    assert workers.spawned[0].stopped
    workers.fail_loads.clear()
    lease = await registry.acquire("a")
    assert registry.status("a").state is ModelState.READY
    registry.release(lease)


async def test_worker_death_marks_model_failed_and_next_request_reloads():
    workers = FakeWorkers()
    registry = make_registry(workers)
    async with registry.lease("a"):
        pass
    workers.spawned[0].die()
    assert registry.status("a").state is ModelState.FAILED
    async with registry.lease("a") as lease:
        assert lease.worker is workers.spawned[1]
    assert registry.status("a").state is ModelState.READY


async def test_lease_is_released_when_the_block_raises():
    registry = make_registry(FakeWorkers())
    with pytest.raises(RuntimeError):
        async with registry.lease("a"):
            assert registry.status("a").leases == 1
            raise RuntimeError("client went away")
    assert registry.status("a").leases == 0


async def test_leased_generation_streams_the_workers_tokens():
    registry = make_registry(FakeWorkers(["x", "y", "z"]))
    async with registry.lease("a") as lease:
        events = [e async for e in lease.generate(SamplingParams(max_tokens=2))]
    assert [getattr(e, "text", None) for e in events[1:3]] == ["x", "y"]
    assert events[-1].finish_reason == "length"


async def test_close_stops_every_worker():
    workers = FakeWorkers()
    registry = make_registry(workers)
    for model in ("a", "b"):
        async with registry.lease(model):
            pass
    await registry.close()
    assert all(w.stopped for w in workers.spawned)
    with pytest.raises(ModelLoadFailed):
        await registry.acquire("a")
