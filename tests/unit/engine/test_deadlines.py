"""The pure deadline check, table by table: which model past which deadline gets which action."""

from __future__ import annotations

import pytest

from engine.config import RegistryConfig
from engine.deadlines import (
    CancelDrain,
    FailStalledLoad,
    IdleUnload,
    KillUnload,
    SlotSnapshot,
    plan_deadlines,
)
from engine.states import ModelState

NOW = 1000.0
CONFIG = RegistryConfig(load_timeout=60, drain_timeout=30, unload_timeout=10, keep_alive=600)
LOADING, READY, DRAINING = ModelState.LOADING, ModelState.READY, ModelState.DRAINING
UNLOADING, ABSENT, FAILED = ModelState.UNLOADING, ModelState.ABSENT, ModelState.FAILED


def slot(state: ModelState, *, since: float = 0.0, model_id: str = "m", **fields) -> SlotSnapshot:
    """A snapshot of model ``m`` that entered ``state`` ``since`` seconds ago."""
    return SlotSnapshot(model_id, state, NOW - since, **fields)


def due(snapshot: SlotSnapshot, config: RegistryConfig = CONFIG) -> object:
    actions = plan_deadlines([snapshot], config, NOW)
    assert len(actions) <= 1
    return actions[0] if actions else None


STALLED = FailStalledLoad("m", "model m: load made no progress for 60s")
DRAIN_OVER = CancelDrain("m", "model m was unloaded: the drain timeout (30s) ended this request")


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        pytest.param(slot(LOADING, since=61, last_progress=NOW - 61), STALLED, id="no-progress"),
        pytest.param(slot(LOADING, since=60, last_progress=NOW - 60), None, id="at-the-timeout"),
        pytest.param(
            slot(LOADING, since=500, last_progress=NOW - 59), None, id="slow-but-progressing"
        ),
        pytest.param(
            slot(LOADING, since=500, last_progress=NOW - 200), STALLED, id="progress-then-stall"
        ),
    ],
)
def test_a_load_fails_only_after_load_timeout_without_progress(snapshot, expected):
    assert due(snapshot) == expected


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        pytest.param(slot(DRAINING, since=31, leases=2), DRAIN_OVER, id="past-drain-timeout"),
        pytest.param(slot(DRAINING, since=30, leases=2), None, id="at-drain-timeout"),
        pytest.param(slot(DRAINING, since=5, leases=2), None, id="within-drain-timeout"),
    ],
)
def test_a_drain_is_cancelled_only_after_drain_timeout(snapshot, expected):
    assert due(snapshot) == expected


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        pytest.param(11.5, KillUnload("m"), id="past-unload-timeout-and-grace"),
        pytest.param(11.0, None, id="within-the-one-second-grace"),
        pytest.param(3.0, None, id="stopping"),
    ],
)
def test_a_worker_that_does_not_stop_is_killed_after_unload_timeout_plus_grace(since, expected):
    assert due(slot(UNLOADING, since=since)) == expected


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        pytest.param(slot(READY, last_used=NOW - 600), IdleUnload("m"), id="idle-keep-alive"),
        pytest.param(slot(READY, last_used=NOW - 599), None, id="idle-within-keep-alive"),
        pytest.param(
            slot(READY, last_used=NOW - 61, keep_alive=60), IdleUnload("m"), id="own-keep-alive"
        ),
        pytest.param(
            slot(READY, last_used=NOW - 700, keep_alive=900), None, id="own-keep-alive-longer"
        ),
        pytest.param(slot(READY, last_used=NOW, keep_alive=0), IdleUnload("m"), id="zero-at-once"),
        pytest.param(slot(READY, last_used=0.0, keep_alive=-1), None, id="minus-one-never"),
        pytest.param(slot(READY, last_used=0.0, pinned=True), None, id="pinned-never"),
        pytest.param(slot(READY, last_used=0.0, leases=1), None, id="running-request"),
        pytest.param(slot(READY, last_used=0.0, queued=1), None, id="queued-request"),
    ],
)
def test_an_idle_model_unloads_after_keep_alive_unless_pinned_busy_or_kept(snapshot, expected):
    assert due(snapshot) == expected


@pytest.mark.parametrize("state", [ABSENT, FAILED])
def test_absent_and_failed_models_have_no_deadline(state):
    assert due(slot(state, since=10_000, last_used=0.0, last_progress=0.0)) is None


def test_each_model_past_its_deadline_gets_one_action_in_the_order_given():
    snapshots = [
        slot(READY, model_id="idle", last_used=NOW - 700),
        slot(READY, model_id="busy", last_used=NOW - 700, leases=1),
        slot(UNLOADING, model_id="stuck", since=20),
        slot(LOADING, model_id="stalled", since=90, last_progress=NOW - 90),
    ]
    assert plan_deadlines(snapshots, CONFIG, NOW) == [
        IdleUnload("idle"),
        KillUnload("stuck"),
        FailStalledLoad("stalled", "model stalled: load made no progress for 60s"),
    ]
