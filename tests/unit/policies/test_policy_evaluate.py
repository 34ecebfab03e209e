"""The whole decision: a fixed order in which the first denial wins."""

from __future__ import annotations

from dataclasses import replace

import pytest

from policies.decision import ALLOW, Deny
from policies.evaluate import PolicyRequest, evaluate, evaluate_download
from policies.principal import Limits, Principal
from policies.resources import ModelResources
from policies.usage import EMPTY_USAGE, UsageSnapshot

NOW = 1_700_000_000.0
GiB = 1024**3
MODEL = "mlx-community/big-model"

FREE_KEY = Principal("key-7f3a", "alice", frozenset({"infer", "load"}), ("*",), Limits())
REQUEST = PolicyRequest(MODEL, requested_tokens=100, typical_request_seconds=4.0)
ON_DISK = ModelResources(MODEL, False, True, 4 * GiB, 8 * GiB, 0)
LOADED = replace(ON_DISK, loaded=True)


def decide(principal=FREE_KEY, usage=EMPTY_USAGE, resources=ON_DISK, request=REQUEST):
    return evaluate(principal, request, usage, resources, NOW)


def reason(decision) -> tuple[int, str, str | None]:
    """(status, code, scope or limit kind) of a denial, or (200, "allow", None)."""
    if not isinstance(decision, Deny):
        return (200, "allow", None)
    return (
        decision.status,
        decision.code,
        decision.details.get("scope", decision.details.get("kind")),
    )


def test_first_denial_wins_in_the_fixed_order():
    # Everything is wrong at first; each step fixes one problem and reveals the next.
    principal = Principal(
        "key-7f3a",
        "alice",
        frozenset(),
        ("other/*",),
        Limits(
            requests_per_minute=1,
            tokens_per_minute=100,
            max_concurrent=1,
            tokens_per_day=1000,
            loads_per_hour=1,
        ),
    )
    usage = UsageSnapshot(
        recent_requests=(NOW - 1,),
        recent_tokens=((NOW - 1, 100),),
        concurrent=1,
        tokens_today=1000,
        recent_loads=(NOW - 1,),
    )
    resources = replace(ON_DISK, need_bytes=9 * GiB)
    steps = [
        ((403, "model_not_allowed", None), lambda p, u, r: (replace(p, models=("*",)), u, r)),
        (
            (403, "missing_scope", "infer"),
            lambda p, u, r: (replace(p, scopes=frozenset({"infer"})), u, r),
        ),
        (
            (403, "missing_scope", "load"),
            lambda p, u, r: (replace(p, scopes=frozenset({"infer", "load"})), u, r),
        ),
        (
            (429, "rate_limit_exceeded", "requests"),
            lambda p, u, r: (p, replace(u, recent_requests=()), r),
        ),
        (
            (429, "rate_limit_exceeded", "tokens"),
            lambda p, u, r: (p, replace(u, recent_tokens=()), r),
        ),
        (
            (429, "rate_limit_exceeded", "concurrent"),
            lambda p, u, r: (p, replace(u, concurrent=0), r),
        ),
        ((403, "quota_exhausted", "tokens"), lambda p, u, r: (p, replace(u, tokens_today=0), r)),
        ((403, "quota_exhausted", "loads"), lambda p, u, r: (p, replace(u, recent_loads=()), r)),
        ((507, "insufficient_memory", None), lambda p, u, r: (p, u, replace(r, need_bytes=GiB))),
    ]
    for expected, fix in steps:
        assert reason(decide(principal, usage, resources)) == expected
        principal, usage, resources = fix(principal, usage, resources)
    assert decide(principal, usage, resources) == ALLOW


@pytest.mark.parametrize(
    "usage",
    [
        UsageSnapshot(recent_requests=(NOW - 1,) * 10),
        UsageSnapshot(recent_tokens=((NOW - 1, 10_000),)),
        UsageSnapshot(concurrent=10),
        UsageSnapshot(tokens_today=10**9),
    ],
)
def test_refused_by_allowlist_before_rate_limits(usage):
    limits = Limits(
        requests_per_minute=1, tokens_per_minute=100, max_concurrent=1, tokens_per_day=1
    )
    principal = replace(FREE_KEY, models=("tiny-*",), limits=limits)
    decision = decide(principal, usage)
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (403, "model_not_allowed")
    assert decision.retry_after is None
    assert decision.message == f"This key may not use model {MODEL}."


@pytest.mark.parametrize(
    ("scopes", "resources", "expected"),
    [
        ({"infer"}, LOADED, (200, "allow", None)),
        ({"infer"}, ON_DISK, (403, "missing_scope", "load")),
        ({"infer", "load"}, ON_DISK, (200, "allow", None)),
        ({"admin"}, ON_DISK, (200, "allow", None)),  # admin holds every scope
        ({"load"}, LOADED, (403, "missing_scope", "infer")),
        ({"infer"}, replace(ON_DISK, on_disk=False), (200, "allow", None)),  # nothing to load
    ],
)
def test_key_without_load_scope_may_use_a_loaded_model_but_not_load_one(
    scopes, resources, expected
):
    decision = decide(replace(FREE_KEY, scopes=frozenset(scopes)), resources=resources)
    assert reason(decision) == expected
    if expected[2] == "load":
        assert isinstance(decision, Deny)
        assert "is not loaded" in decision.message and "`load` scope" in decision.message


def test_a_loaded_model_skips_the_load_quota_and_the_memory_check():
    principal = replace(FREE_KEY, limits=Limits(loads_per_hour=1))
    usage = UsageSnapshot(recent_loads=(NOW - 1,))
    huge = replace(LOADED, need_bytes=100 * GiB)
    assert decide(principal, usage, huge) == ALLOW
    assert reason(decide(principal, usage, replace(huge, loaded=False))) == (
        403,
        "quota_exhausted",
        "loads",
    )


def test_concurrency_denial_uses_the_requests_typical_duration():
    principal = replace(FREE_KEY, limits=Limits(max_concurrent=1))
    decision = decide(principal, UsageSnapshot(concurrent=1), LOADED)
    assert isinstance(decision, Deny) and decision.retry_after == 4.0


def test_tokens_per_minute_sees_the_requested_tokens():
    principal = replace(FREE_KEY, limits=Limits(tokens_per_minute=1000))
    usage = UsageSnapshot(recent_tokens=((NOW - 20, 950),))
    assert decide(principal, usage, LOADED, replace(REQUEST, requested_tokens=50)) == ALLOW
    decision = decide(principal, usage, LOADED, replace(REQUEST, requested_tokens=51))
    assert isinstance(decision, Deny) and decision.retry_after == pytest.approx(40.0)


OTHER_KEY = Principal("key-other-9c1e", "mallory", frozenset({"infer"}), ("*",), Limits())


def all_denials() -> list[Deny]:
    limits = Limits(1, 100, 1, 1000, 1, 1000)
    key = replace(FREE_KEY, limits=limits)
    used = UsageSnapshot((NOW - 1,), ((NOW - 1, 100),), 1, 1000, (NOW - 1,), 1000)
    downloader = replace(key, scopes=frozenset({"download"}))
    decisions = [
        decide(replace(key, models=("tiny-*",))),
        decide(replace(key, scopes=frozenset())),
        decide(replace(key, scopes=frozenset({"infer"}))),
        decide(key, used),
        decide(key, replace(used, recent_requests=())),
        decide(key, replace(used, recent_requests=(), recent_tokens=())),
        decide(key, UsageSnapshot(tokens_today=1000)),
        decide(key, UsageSnapshot(recent_loads=(NOW - 1,))),
        decide(key, resources=replace(ON_DISK, need_bytes=9 * GiB)),
        evaluate_download(key, False, True, 1, 10, used, NOW),
        evaluate_download(replace(key, scopes=frozenset()), True, True, 1, 10, used, NOW),
        evaluate_download(downloader, True, True, 1, 10, used, NOW),
        evaluate_download(downloader, True, True, 10**9, 10, UsageSnapshot(), NOW),
        evaluate_download(replace(downloader, limits=Limits()), True, True, 11, 10, used, NOW),
    ]
    assert all(isinstance(d, Deny) for d in decisions)
    return [d for d in decisions if isinstance(d, Deny)]


@pytest.mark.parametrize("denial", all_denials(), ids=lambda d: d.code)
def test_denial_messages_never_mention_other_keys(denial):
    # Messages speak of "this key": no key id, no key name, nobody else's numbers.
    for secret in (FREE_KEY.key_id, FREE_KEY.name, OTHER_KEY.key_id, OTHER_KEY.name):
        assert secret not in denial.message
    assert "key" not in " ".join(str(v) for v in denial.details.values())
    assert denial.message.strip() and denial.status in (403, 429, 507)
    assert (denial.status == 429) == (denial.retry_after is not None)


@pytest.mark.parametrize(
    ("enabled", "repo_allowed", "scopes", "used", "size", "free", "expected"),
    [
        (False, True, {"download"}, 0, 1, 10, (403, "download_not_allowed", None)),
        (True, False, {"download"}, 0, 1, 10, (403, "download_not_allowed", None)),
        (True, False, set(), 10**9, 10**9, 0, (403, "download_not_allowed", None)),
        (True, True, {"infer"}, 10**9, 10**9, 0, (403, "missing_scope", "download")),
        (True, True, {"download"}, 900, 200, 0, (403, "quota_exhausted", "download_bytes")),
        (True, True, {"download"}, 0, 200, 100, (507, "insufficient_storage", None)),
        (True, True, {"admin"}, 0, 200, 200, (200, "allow", None)),
    ],
)
def test_download_denials_come_in_their_fixed_order(
    enabled, repo_allowed, scopes, used, size, free, expected
):
    principal = replace(
        FREE_KEY, scopes=frozenset(scopes), limits=Limits(download_bytes_per_day=1000)
    )
    usage = UsageSnapshot(download_bytes_today=used)
    decision = evaluate_download(principal, repo_allowed, enabled, size, free, usage, NOW)
    assert reason(decision) == expected


def test_download_messages_name_the_repository_when_given():
    decision = evaluate_download(
        FREE_KEY, False, True, 1, 10, UsageSnapshot(), NOW, repo_id="org/model"
    )
    assert isinstance(decision, Deny) and "org/model" in decision.message
    assert decision.details == {"reason": "repo_not_allowed"}
