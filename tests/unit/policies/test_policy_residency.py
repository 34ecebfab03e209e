"""Ollama's per-request keep_alive: within the operator's ceiling, and a change of a
model's residency (longer, shorter, unload at once) only for a key with ``load``."""

from __future__ import annotations

import pytest

from policies.decision import Allow, Deny
from policies.principal import Principal
from policies.residency import check_keep_alive, clamp_keep_alive

MEMBER = Principal("member", "member", scopes=frozenset({"infer"}))
LOADER = Principal("loader", "loader", scopes=frozenset({"infer", "load"}))
ADMIN = Principal("admin", "admin", scopes=frozenset({"admin"}))
DEFAULT, CEILING = 600.0, 3600.0


@pytest.mark.parametrize(
    ("requested", "ceiling", "expected"),
    [
        (30.0, CEILING, 30.0),
        (36000.0, CEILING, CEILING),
        (-1.0, CEILING, CEILING),  # "forever" is the ceiling
        (0.0, CEILING, 0.0),
        (36000.0, -1.0, 36000.0),  # no ceiling
        (-5.0, -1.0, -1.0),
    ],
)
def test_keep_alive_is_lowered_to_the_ceiling(requested, ceiling, expected):
    assert clamp_keep_alive(requested, ceiling) == expected


@pytest.mark.parametrize("requested", [0.0, 1.0, 599.0, 601.0, 3600.0, 1e9, -1.0])
def test_a_key_without_load_may_not_change_a_models_residency(requested):
    decision, value = check_keep_alive(MEMBER, requested, DEFAULT, CEILING)
    assert isinstance(decision, Deny)
    assert decision.code == "missing_scope" and decision.details == {"scope": "load"}
    assert value is None
    assert "load" in decision.message and "member" not in decision.message


def test_the_default_from_a_key_without_load_is_accepted_and_changes_nothing():
    assert check_keep_alive(MEMBER, DEFAULT, DEFAULT, CEILING) == (Allow(), None)
    # "forever" on a model whose default is forever (no ceiling) is no change either
    assert check_keep_alive(MEMBER, -1.0, -1.0, -1.0) == (Allow(), None)


@pytest.mark.parametrize("who", [LOADER, ADMIN])
@pytest.mark.parametrize(
    ("requested", "applied"), [(0.0, 0.0), (120.0, 120.0), (1e9, CEILING), (-1.0, CEILING)]
)
def test_a_key_with_load_sets_it_within_the_ceiling(who, requested, applied):
    decision, value = check_keep_alive(who, requested, DEFAULT, CEILING)
    assert isinstance(decision, Allow)
    assert value == applied


def test_no_keep_alive_asks_for_nothing():
    assert check_keep_alive(MEMBER, None, DEFAULT, CEILING) == (Allow(), None)
