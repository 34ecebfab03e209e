"""One caller's share of a model: at most ``queue_per_key`` queued-plus-running requests.

Past its share a caller is refused at once with ``CallerBusy`` and a
``Retry-After`` from the model's measured request duration; other callers keep
being served.  Stepped through with fake workers and a fake clock (conftest).
"""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import CallerBusy, ServerBusy

pytestmark = pytest.mark.anyio


async def test_caller_past_its_share_is_refused_at_once_while_other_callers_are_served(
    make, workers, settle
):
    workers.load_gate.clear()
    registry = make(queue_per_key=2, load_wait=100)
    burst = [asyncio.create_task(registry.acquire("a", "A")) for _ in range(5)]
    other = asyncio.create_task(registry.acquire("a", "B"))
    await settle()
    refused = [task for task in burst if task.done()]
    assert len(refused) == 3
    for task in refused:
        with pytest.raises(CallerBusy, match="its share is 2") as busy:
            await task
        assert busy.value.retry_after >= 1
    assert registry.status("a").queued == 3  # A's two and B's one
    workers.load_gate.set()
    accepted = await asyncio.gather(*(task for task in burst if task not in refused))
    registry.release(await other)
    assert workers.loads == ["a"]
    with pytest.raises(CallerBusy):  # A's two leases are running: still its whole share
        await registry.acquire("a", "A")
    for lease in accepted:
        registry.release(lease)
    registry.release(await registry.acquire("a", "A"))  # released: A is served again


@pytest.mark.parametrize(
    ("measured", "max_concurrent", "running", "queued", "expected"),
    [
        pytest.param([20.0], 1, 1, 1, 40.0, id="two-ahead-one-at-a-time"),
        pytest.param([20.0], 4, 2, 0, 10.0, id="two-running-four-at-a-time"),
        pytest.param([4.0, 8.0], 2, 2, 0, 6.0, id="mean-of-measured-durations"),
        pytest.param([0.5], 4, 2, 0, 1.0, id="at-least-one-second"),
    ],
)
async def test_caller_busy_retry_after_follows_the_measured_duration_of_its_own_requests(
    make, clock, settle, measured, max_concurrent, running, queued, expected
):
    registry = make(queue_per_key=running + queued, max_concurrent=max_concurrent)
    for seconds in measured:  # requests of another caller set the model's measured speed
        lease = await registry.acquire("a", "other")
        clock.advance(seconds)
        registry.release(lease)
    held = [await registry.acquire("a", "A") for _ in range(running)]
    waiting = [asyncio.create_task(registry.acquire("a", "A")) for _ in range(queued)]
    await settle()
    with pytest.raises(CallerBusy) as busy:
        await registry.acquire("a", "A")
    assert busy.value.retry_after == pytest.approx(expected)
    for lease in held:
        registry.release(lease)
    for lease in await asyncio.gather(*waiting):
        registry.release(lease)


async def test_precheck_with_a_caller_refuses_it_past_its_share(make):
    registry = make(queue_per_key=1)
    lease = await registry.acquire("a", "A")
    with pytest.raises(CallerBusy):
        registry.precheck("a", "A")
    registry.precheck("a", "B")
    registry.precheck("a")  # no caller: the share is not checked
    registry.release(lease)


async def test_admin_load_is_outside_every_callers_share(make, workers, settle):
    workers.load_gate.clear()
    registry = make(queue_per_key=1, load_wait=100)
    registry.request_load("a")
    await settle()
    mine = asyncio.create_task(registry.acquire("a", "admin"))
    await settle()
    assert not mine.done()  # queued beside the admin's own load, not refused
    workers.load_gate.set()
    registry.release(await mine)


async def test_no_share_is_enforced_when_queue_per_key_is_zero(make, workers, settle):
    workers.load_gate.clear()
    registry = make(queue_per_key=0, max_concurrent=8, load_wait=100)
    burst = [asyncio.create_task(registry.acquire("a", "A")) for _ in range(6)]
    await settle()
    assert not any(task.done() for task in burst)
    workers.load_gate.set()
    for lease in await asyncio.gather(*burst):
        registry.release(lease)


async def test_model_queue_cap_still_applies_beside_the_callers_share(make, workers, settle):
    workers.load_gate.clear()
    registry = make(queue_per_key=2, queue_per_model=3, load_wait=100)
    waiting = [asyncio.create_task(registry.acquire("a", caller)) for caller in ("A", "B", "C")]
    await settle()
    with pytest.raises(ServerBusy):
        await registry.acquire("a", "D")
    workers.load_gate.set()
    for lease in await asyncio.gather(*waiting):
        registry.release(lease)
