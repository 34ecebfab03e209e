"""The registry's refusals at the door, table by table (pure: plain numbers in, error out)."""

from __future__ import annotations

import pytest

from engine.config import RegistryConfig
from engine.errors import CallerBusy, InsufficientMemory, LoadNotPermitted, ServerBusy
from engine.memory import MemoryNeed
from engine.refusals import Arrival, refusal

GB = 1_000_000_000
CONFIG = RegistryConfig(
    memory_budget=10 * GB, queue_per_key=2, queue_per_model=4, queue_total=6, max_concurrent=2
)


def arrive(need_gb: float = 4, pinned_gb: float = 0, **fields) -> Arrival:
    need = MemoryNeed(weights=int(need_gb * GB), kv_cache=0, overhead=0, context_length=1024)
    return Arrival("m", need, int(pinned_gb * GB), **fields)


@pytest.mark.parametrize(
    ("arrival", "expected"),
    [
        pytest.param(arrive(), None, id="room-everywhere"),
        pytest.param(arrive(load_refused=True), LoadNotPermitted, id="may-not-load"),
        pytest.param(arrive(11), InsufficientMemory, id="never-fits"),
        pytest.param(arrive(6, pinned_gb=5), InsufficientMemory, id="never-fits-beside-pinned"),
        pytest.param(arrive(held=1), None, id="within-share"),
        pytest.param(arrive(held=2), CallerBusy, id="share-held"),
        pytest.param(arrive(queued=4, held=0), ServerBusy, id="model-queue-full"),
        pytest.param(arrive(queued_total=6), ServerBusy, id="gateway-queue-full"),
        pytest.param(arrive(queued=3, queued_total=5), None, id="queues-not-full"),
    ],
)
def test_each_limit_refuses_with_its_own_error(arrival, expected):
    error = refusal(arrival, CONFIG)
    assert (None if error is None else type(error)) is expected


@pytest.mark.parametrize(
    ("arrival", "expected"),
    [
        pytest.param(arrive(11, load_refused=True), LoadNotPermitted, id="load-before-memory"),
        pytest.param(arrive(11, held=5), InsufficientMemory, id="memory-before-share"),
        pytest.param(arrive(held=5, queued_total=9), CallerBusy, id="share-before-queue"),
    ],
)
def test_refusals_come_in_a_fixed_order(arrival, expected):
    assert type(refusal(arrival, CONFIG)) is expected


def test_no_share_is_counted_without_a_caller_or_with_queue_per_key_zero():
    assert refusal(arrive(held=None), CONFIG) is None
    assert refusal(arrive(held=50), RegistryConfig(memory_budget=10 * GB)) is None


def test_busy_answers_carry_the_estimates_given_and_never_less_than_a_second():
    share = refusal(arrive(held=2, caller_wait=12.5), CONFIG)
    queue = refusal(arrive(queued=4, queue_wait=0.2), CONFIG)
    assert isinstance(share, CallerBusy) and share.retry_after == 12.5
    assert isinstance(queue, ServerBusy) and queue.retry_after == 1.0
