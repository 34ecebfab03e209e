"""Room on the server: memory for a model, disk for a download (507)."""

from __future__ import annotations

import pytest

from policies.decision import ALLOW, Deny
from policies.resources import ModelResources, check_memory, check_storage, format_bytes

GiB = 1024**3
MiB = 1024**2


def res(loaded=False, need=4 * GiB, budget=8 * GiB, pinned=0) -> ModelResources:
    return ModelResources("big-model", loaded, True, need, budget, pinned)


@pytest.mark.parametrize(
    "resources",
    [
        res(),
        res(need=8 * GiB),  # exactly the budget fits
        res(need=6 * GiB, pinned=2 * GiB),
        res(loaded=True, need=100 * GiB),  # loaded: no new memory
        res(need=None, budget=1),  # unknown: the load reports it
    ],
)
def test_model_that_fits_or_needs_nothing_passes(resources):
    assert check_memory(resources) == ALLOW


def test_model_that_can_never_fit_is_507_with_the_numbers():
    decision = check_memory(res(need=7 * GiB, budget=8 * GiB, pinned=1536 * MiB))
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (507, "insufficient_memory")
    assert decision.retry_after is None
    for text in ("big-model", "7.0 GiB", "8.0 GiB", "1.5 GiB", str(7 * GiB), str(8 * GiB)):
        assert text in decision.message
    assert decision.details == {
        "model": "big-model",
        "need_bytes": 7 * GiB,
        "budget_bytes": 8 * GiB,
        "pinned_bytes": 1536 * MiB,
    }


def test_memory_message_mentions_pinned_models_only_when_there_are_some():
    decision = check_memory(res(need=9 * GiB))
    assert isinstance(decision, Deny)
    assert "pinned" not in decision.message


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1024, "1.0 KiB"),
        (300 * MiB, "300.0 MiB"),
        (3 * GiB // 2, "1.5 GiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("size", "free", "denied"),
    [(10, 10, False), (11, 10, True), (0, 0, False)],
)
def test_download_must_fit_the_free_disk(size, free, denied):
    decision = check_storage(size, free)
    if not denied:
        assert decision == ALLOW
        return
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (507, "insufficient_storage")
    assert decision.details == {"size_bytes": size, "free_bytes": free}
