"""A request's keep_alive (Ollama's), carried out by the registry, with fake workers
and a fake clock (no sleeps).

The override is set when the request gets its lease, used by the deadline check
instead of the catalogue's or the engine's keep-alive (600 s here), and cleared
when the model's worker goes away.  The fixtures are in this directory's
``conftest.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import ModelNotReady
from engine.registry import ModelState, Registry

pytestmark = pytest.mark.anyio

DEFAULT = 600.0  # RegistryConfig.keep_alive


async def idle_for(registry: Registry, clock, seconds: float, settle) -> ModelState:
    """Let ``seconds`` pass, run the deadline check, and return ``a``'s state."""
    clock.advance(seconds)
    registry.check_deadlines()
    await settle()
    return registry.status("a").state


async def test_a_request_keep_alive_keeps_an_idle_model_past_the_default(make, clock, settle):
    registry = make()
    registry.release(await registry.acquire("a", keep_alive=3600))
    assert await idle_for(registry, clock, DEFAULT + 1, settle) is ModelState.READY
    assert await idle_for(registry, clock, 3000, settle) is ModelState.ABSENT


async def test_a_negative_keep_alive_keeps_the_model_for_ever(make, clock, settle):
    registry = make(keep_alive={"a": 60})
    registry.release(await registry.acquire("a", keep_alive=-1))
    assert await idle_for(registry, clock, 10**7, settle) is ModelState.READY


async def test_keep_alive_zero_unloads_the_model_as_soon_as_its_last_lease_is_released(
    make, workers, settle
):
    registry = make()
    first = await registry.acquire("a", keep_alive=0)
    second = await registry.acquire("a")
    registry.check_deadlines()
    await settle()
    assert registry.status("a").state is ModelState.READY  # leased: never idle-unloaded
    registry.release(first)
    await settle()
    assert registry.status("a").state is ModelState.READY
    registry.release(second)  # no watchdog tick, no clock move: the release itself unloads it
    await settle()
    assert registry.status("a").state is ModelState.ABSENT
    assert workers.spawned[0].stopped


async def test_keep_alive_zero_waits_for_the_queue_too(make, settle):
    registry = make(max_concurrent=1)
    first = await registry.acquire("a", keep_alive=0)
    queued = asyncio.create_task(registry.acquire("a"))
    await settle()
    registry.release(first)
    second = await queued  # served by the same worker, not unloaded under it
    assert registry.status("a").state is ModelState.READY
    registry.release(second)
    await settle()
    assert registry.status("a").state is ModelState.ABSENT


async def test_a_request_without_keep_alive_leaves_the_override_as_it_is(make, clock, settle):
    registry = make()
    registry.release(await registry.acquire("a", keep_alive=3600))
    registry.release(await registry.acquire("a"))
    assert registry.status("a").keep_alive == 3600
    assert await idle_for(registry, clock, DEFAULT + 1, settle) is ModelState.READY


async def test_the_latest_request_keep_alive_wins(make, clock, settle):
    registry = make()
    registry.release(await registry.acquire("a", keep_alive=3600))
    registry.release(await registry.acquire("a", keep_alive=30))
    assert await idle_for(registry, clock, 31, settle) is ModelState.ABSENT


async def test_set_keep_alive_zero_unloads_an_idle_ready_model_at_once(make, settle):
    registry = make()
    registry.release(await registry.acquire("a"))
    assert registry.set_keep_alive("a", 0) is True
    await settle()
    assert registry.status("a").state is ModelState.ABSENT


async def test_set_keep_alive_zero_on_a_busy_model_unloads_it_only_after_release(make, settle):
    registry = make()
    lease = await registry.acquire("a")
    assert registry.set_keep_alive("a", 0) is True
    await settle()
    assert registry.status("a").state is ModelState.READY
    registry.release(lease)
    await settle()
    assert registry.status("a").state is ModelState.ABSENT


async def test_set_keep_alive_on_a_loading_model_holds_once_it_is_ready(
    make, clock, workers, settle
):
    workers.load_gate.clear()
    registry = make()
    want = asyncio.create_task(registry.acquire("a"))
    await settle()
    assert registry.status("a").state is ModelState.LOADING
    assert registry.set_keep_alive("a", 3600) is True
    workers.load_gate.set()
    registry.release(await want)
    assert await idle_for(registry, clock, DEFAULT + 1, settle) is ModelState.READY


async def test_set_keep_alive_on_a_model_not_loaded_changes_nothing(make, workers, settle):
    registry = make()
    assert registry.set_keep_alive("a", 3600) is False  # catalogued, never touched
    registry.status("b")
    assert registry.set_keep_alive("b", 0) is False  # catalogued, absent
    await settle()
    assert workers.loads == []
    assert registry.status("a").keep_alive == DEFAULT
    assert registry.status("b").state is ModelState.ABSENT


async def test_a_waiter_that_timed_out_sets_no_keep_alive(make, clock, settle):
    registry = make(max_concurrent=1)
    first = await registry.acquire("a")
    with pytest.raises(ModelNotReady):
        await registry.acquire("a", wait=0.01, keep_alive=0)
    registry.release(first)
    await settle()
    assert registry.status("a").state is ModelState.READY
    assert registry.status("a").keep_alive == DEFAULT


async def test_a_waiter_that_was_cancelled_sets_no_keep_alive(make, settle):
    registry = make(max_concurrent=1)
    first = await registry.acquire("a")
    queued = asyncio.create_task(registry.acquire("a", keep_alive=0))
    await settle()
    queued.cancel()
    await settle()
    registry.release(first)
    await settle()
    assert registry.status("a").state is ModelState.READY
    assert registry.status("a").keep_alive == DEFAULT


def unload(registry: Registry, workers) -> None:
    registry.request_unload("a")


def crash(registry: Registry, workers) -> None:
    workers.spawned[0].die()


@pytest.mark.parametrize("end", [unload, crash], ids=["unloaded", "crashed"])
async def test_the_override_goes_with_the_worker(make, clock, workers, settle, end):
    registry = make()
    registry.release(await registry.acquire("a", keep_alive=3600))
    end(registry, workers)
    await settle()
    assert registry.status("a").state in (ModelState.ABSENT, ModelState.FAILED)
    assert registry.status("a").keep_alive == DEFAULT
    registry.release(await registry.acquire("a"))  # a fresh load: the default again
    assert len(workers.spawned) == 2
    assert await idle_for(registry, clock, DEFAULT + 1, settle) is ModelState.ABSENT


async def test_the_override_goes_with_an_evicted_model(make, clock, workers, settle):
    registry = make(max_loaded_models=1)
    registry.release(await registry.acquire("a", keep_alive=3600))
    registry.release(await registry.acquire("b"))  # evicts a
    assert registry.status("a").state is ModelState.ABSENT
    assert registry.status("a").keep_alive == DEFAULT


async def test_a_pinned_model_ignores_keep_alive_zero(make, clock, settle):
    registry = make(pinned=("a",))
    registry.release(await registry.acquire("a", keep_alive=0))
    await settle()
    assert registry.status("a").state is ModelState.READY
    assert registry.set_keep_alive("a", 0) is True
    assert await idle_for(registry, clock, 10**6, settle) is ModelState.READY


@pytest.mark.parametrize(
    ("catalogued", "requested", "effective"),
    [
        (None, None, DEFAULT),  # the engine's default
        (120.0, None, 120.0),  # the catalogue's
        (120.0, 3600.0, 3600.0),  # the request's override wins
        (None, -1.0, -1.0),  # for ever
        (None, 0.0, 0.0),
    ],
)
async def test_model_status_reports_the_effective_keep_alive(
    make, catalogued, requested, effective
):
    registry = make(keep_alive={"a": catalogued})
    assert registry.status("a").keep_alive == (DEFAULT if catalogued is None else catalogued)
    lease = await registry.acquire("a", keep_alive=requested)
    assert registry.status("a").keep_alive == effective
    registry.release(lease)


async def test_model_status_reports_a_pinned_model_as_kept_for_ever(make):
    registry = make(pinned=("a",))
    lease = await registry.acquire("a", keep_alive=30)
    assert registry.status("a").keep_alive == -1
    registry.release(lease)
