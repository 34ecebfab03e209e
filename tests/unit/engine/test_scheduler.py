"""The registry's pure load decisions, table by table."""

from __future__ import annotations

import pytest

from engine.scheduler import Admit, Evict, NeverFits, Resident, Wait, plan_load

GB = 1_000_000_000


def plan(need, residents, *, budget=10 * GB, max_loaded=None, now=100.0, min_residency=10.0):
    return plan_load(
        "target",
        need,
        residents,
        budget=budget,
        max_loaded=max_loaded,
        now=now,
        min_residency=min_residency,
    )


def ready(id, need=4 * GB, leases=0, since=0.0, used=0.0, pinned=False):
    return Resident(id, "ready", need, leases, pinned, since, used)


def test_model_that_fits_beside_the_residents_is_admitted():
    assert plan(4 * GB, [ready("a")]) == Admit()


def test_model_larger_than_the_budget_never_fits():
    result = plan(11 * GB, [])
    assert isinstance(result, NeverFits)
    assert (result.need, result.budget, result.pinned) == (11 * GB, 10 * GB, 0)


def test_pinned_models_count_against_what_can_ever_fit():
    result = plan(7 * GB, [ready("p", pinned=True)])
    assert isinstance(result, NeverFits) and result.pinned == 4 * GB


@pytest.mark.parametrize(
    ("residents", "expected"),
    [
        # idle before busy
        ([ready("busy", leases=2, used=1), ready("idle", used=50)], Evict(idle=("idle",))),
        # least recently used first among idle
        ([ready("new", used=90), ready("old", used=10)], Evict(idle=("old",))),
        # only busy ones left: drain the least recently used
        (
            [ready("b1", leases=1, used=80), ready("b2", leases=1, used=20)],
            Evict(busy=("b2",)),
        ),
    ],
)
def test_eviction_order_idle_first_then_least_recently_used(residents, expected):
    assert plan(6 * GB, residents) == expected


def test_enough_is_evicted_to_fit_and_no_more():
    residents = [ready("a", 3 * GB, used=1), ready("b", 3 * GB, used=2), ready("c", 3 * GB, used=3)]
    assert plan(4 * GB, residents) == Evict(idle=("a",))
    assert plan(7 * GB, residents) == Evict(idle=("a", "b"))


def test_pinned_models_are_never_evicted():
    residents = [ready("pin", pinned=True, used=0), ready("other", used=99)]
    assert plan(5 * GB, residents) == Evict(idle=("other",))


def test_max_loaded_one_is_single_model_mode():
    assert plan(1 * GB, [ready("a", 1 * GB)], max_loaded=1) == Evict(idle=("a",))
    assert plan(1 * GB, [], max_loaded=1) == Admit()


def test_model_within_minimum_residency_is_not_evicted_yet():
    result = plan(8 * GB, [ready("a", since=95.0)], now=100.0, min_residency=10.0)
    assert result == Wait("a is within its minimum residency", until=105.0)


def test_memory_already_being_freed_is_waited_for_not_evicted_twice():
    draining = Resident("d", "draining", 4 * GB, leases=1)
    assert plan(8 * GB, [draining, ready("a", 2 * GB)]) == Wait("waiting for d to unload")
    assert plan(8 * GB, [draining]) == Wait("waiting for d to unload")
    assert plan(9 * GB, [draining, ready("a", 2 * GB)]) == Evict(idle=("a",))


def test_loading_model_is_waited_for_not_evicted():
    loading = Resident("l", "loading", 8 * GB)
    assert plan(4 * GB, [loading]) == Wait("waiting for l to finish loading")


def test_the_target_itself_is_not_counted_as_a_resident():
    assert plan(8 * GB, [Resident("target", "loading", 8 * GB)]) == Admit()
