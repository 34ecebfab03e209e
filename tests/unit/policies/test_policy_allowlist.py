"""Model allowlists: glob patterns over canonical catalogue ids."""

from __future__ import annotations

import pytest

from policies.allowlist import matching_pattern, model_allowed, visible_models
from policies.principal import Principal


def key(*models: str, scopes: frozenset[str] = frozenset({"infer"})) -> Principal:
    return Principal("k1", "alice", scopes, tuple(models))


@pytest.mark.parametrize(
    ("patterns", "model_id", "allowed"),
    [
        (("*",), "mlx-community/Qwen3-4B-4bit", True),
        (("*",), "smollm2-135m", True),
        (("mlx-community/*",), "mlx-community/Qwen3-4B-4bit", True),
        (("mlx-community/*",), "other/Qwen3-4B-4bit", False),
        (("smollm2-*",), "smollm2-135m", True),
        (("smollm2-*",), "SmolLM2-135m", False),  # case-sensitive on every platform
        (("smollm2-*",), "x-smollm2-135m", False),  # anchored at both ends
        (("tiny-?",), "tiny-a", True),
        (("tiny-?",), "tiny-ab", False),
        (("tiny-[ab]",), "tiny-b", True),
        (("a", "tiny-*"), "tiny-b", True),  # any pattern may match
        ((), "tiny-a", False),  # no patterns: nothing
    ],
)
def test_model_allowed_matches_globs(patterns, model_id, allowed):
    assert model_allowed(key(*patterns), model_id) is allowed


def test_admin_scope_does_not_widen_the_allowlist():
    admin = key("tiny-*", scopes=frozenset({"admin"}))
    assert not model_allowed(admin, "big-model")


def test_matching_pattern_names_the_first_match():
    assert matching_pattern(key("tiny-a", "tiny-*"), "tiny-a") == "tiny-a"
    assert matching_pattern(key("tiny-a", "tiny-*"), "tiny-b") == "tiny-*"
    assert matching_pattern(key("tiny-a"), "other") is None


def test_visible_models_keeps_order_and_hides_the_rest():
    ids = ["tiny-b", "mlx-community/a", "tiny-a", "other/x"]
    assert visible_models(key("tiny-*", "mlx-community/*"), ids) == [
        "tiny-b",
        "mlx-community/a",
        "tiny-a",
    ]
    assert visible_models(key(), ids) == []
    assert visible_models(key("*"), iter(ids)) == ids
