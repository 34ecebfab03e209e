"""The per-key limit checks: sliding windows, real waits and period quotas."""

from __future__ import annotations

import pytest

from policies.decision import ALLOW, Deny
from policies.limits import (
    check_concurrency,
    check_download_quota,
    check_loads_per_hour,
    check_requests_per_minute,
    check_tokens_per_day,
    check_tokens_per_minute,
)
from policies.principal import Limits
from policies.reservations import affordable_max_tokens
from policies.usage import UsageSnapshot
from policies.window import MIN_WAIT

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
MIDNIGHT = 1_700_006_400.0  # 2023-11-15T00:00:00Z


def ago(*seconds: float) -> tuple[float, ...]:
    return tuple(NOW - s for s in seconds)


def tokens_ago(*entries: tuple[float, int]) -> tuple[tuple[float, int], ...]:
    return tuple((NOW - s, n) for s, n in entries)


@pytest.mark.parametrize(
    ("limit", "started_ago", "retry_after"),
    [
        (3, (50, 40, 30), 10.0),  # at the limit: the oldest must leave
        (3, (30, 50, 40), 10.0),  # order of the snapshot does not matter
        (3, (59, 50, 40, 30, 10), 20.0),  # over the limit: index count - limit must leave
        (1, (0,), 60.0),  # a request this instant: a full minute
        (2, (75, 59.5, 20), 0.5),  # entries outside the window are ignored
    ],
)
def test_requests_per_minute_retry_after_is_the_real_wait(limit, started_ago, retry_after):
    limits, usage = (
        Limits(requests_per_minute=limit),
        UsageSnapshot(recent_requests=ago(*started_ago)),
    )
    decision = check_requests_per_minute(limits, usage, NOW)
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (429, "rate_limit_exceeded")
    assert decision.retry_after == pytest.approx(retry_after)
    assert decision.details == {
        "kind": "requests",
        "limit": limit,
        "window": "minute",
        "remaining": 0,
        "reset_seconds": decision.retry_after,
    }
    # Waiting exactly that long lets the request pass; a little less does not.
    assert decision.retry_after is not None
    assert check_requests_per_minute(limits, usage, NOW + decision.retry_after) == ALLOW
    assert isinstance(check_requests_per_minute(limits, usage, NOW + retry_after - 0.01), Deny)


@pytest.mark.parametrize(
    ("limit", "started_ago"),
    [(3, ()), (3, (50, 40)), (2, (60, 10)), (2, (61, 70, 3600))],
)
def test_requests_per_minute_allows_below_the_limit_in_the_window(limit, started_ago):
    usage = UsageSnapshot(recent_requests=ago(*started_ago))
    assert check_requests_per_minute(Limits(requests_per_minute=limit), usage, NOW) == ALLOW


@pytest.mark.parametrize(
    ("limit", "entries", "requested", "retry_after"),
    [
        (100, ((50, 40), (30, 40)), 30, 10.0),  # dropping the oldest is enough
        (100, ((50, 40), (30, 40)), 70, 30.0),  # both must leave
        (100, ((30, 40), (50, 40)), 70, 30.0),  # walked oldest first whatever the order
        (100, ((20, 1),), 500, 40.0),  # a request over the whole limit needs an empty window
        (100, ((45, 150),), 0, 15.0),  # already overspent: wait until it leaves
        (100, ((61, 100), (10, 90)), 20, 50.0),  # old entries are outside the window
    ],
)
def test_tokens_per_minute_retry_after_is_the_real_wait(limit, entries, requested, retry_after):
    limits = Limits(tokens_per_minute=limit)
    usage = UsageSnapshot(recent_tokens=tokens_ago(*entries))
    decision = check_tokens_per_minute(limits, usage, NOW, requested)
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (429, "rate_limit_exceeded")
    assert decision.retry_after == pytest.approx(retry_after)
    assert decision.details["kind"] == "tokens"
    assert decision.details["limit"] == limit
    assert decision.retry_after is not None
    later = NOW + decision.retry_after
    assert check_tokens_per_minute(limits, usage, later, requested) == ALLOW
    assert isinstance(check_tokens_per_minute(limits, usage, later - 0.01, requested), Deny)


@pytest.mark.parametrize(
    ("entries", "requested"),
    [
        ((), 100),  # exactly the limit fits
        ((), 10_000),  # larger than the limit: capped, passes on an empty window
        (((50, 40), (30, 40)), 20),  # used + requested == limit
        (((60, 100), (70, 100)), 100),  # an entry exactly 60 s old has left
    ],
)
def test_tokens_per_minute_allows_what_fits(entries, requested):
    usage = UsageSnapshot(recent_tokens=tokens_ago(*entries))
    assert check_tokens_per_minute(Limits(tokens_per_minute=100), usage, NOW, requested) == ALLOW


@pytest.mark.parametrize(
    ("concurrent", "typical", "retry_after"),
    [(2, 7.5, 7.5), (5, 30.0, 30.0), (2, 0.0, MIN_WAIT), (2, -1.0, MIN_WAIT)],
)
def test_concurrency_denial_retries_after_the_typical_request(concurrent, typical, retry_after):
    decision = check_concurrency(
        Limits(max_concurrent=2), UsageSnapshot(concurrent=concurrent), typical
    )
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (429, "rate_limit_exceeded")
    assert decision.retry_after == retry_after
    assert decision.details["kind"] == "concurrent"


def test_concurrency_allows_a_free_slot():
    assert check_concurrency(Limits(max_concurrent=2), UsageSnapshot(concurrent=1), 5.0) == ALLOW


@pytest.mark.parametrize(
    ("now", "reset_at", "reset_text"),
    [
        (NOW, MIDNIGHT, "2023-11-15T00:00:00Z"),
        (MIDNIGHT - 0.5, MIDNIGHT, "2023-11-15T00:00:00Z"),
        (MIDNIGHT, MIDNIGHT + 86400, "2023-11-16T00:00:00Z"),  # midnight itself: the next one
    ],
)
def test_exhausted_daily_tokens_reset_at_the_next_utc_midnight(now, reset_at, reset_text):
    usage = UsageSnapshot(tokens_today=1000)
    decision = check_tokens_per_day(Limits(tokens_per_day=1000), usage, now, 10)
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (403, "quota_exhausted")
    assert decision.reset_at == reset_at
    assert decision.retry_after is None
    assert reset_text in decision.message
    assert decision.details["used"] == 1000


def test_daily_tokens_deny_a_reservation_that_would_cross_the_limit():
    usage = UsageSnapshot(tokens_today=990)
    assert check_tokens_per_day(Limits(tokens_per_day=1000), usage, NOW, 10) == ALLOW
    decision = check_tokens_per_day(Limits(tokens_per_day=1000), usage, NOW, 11)
    assert isinstance(decision, Deny) and decision.code == "quota_exhausted"
    assert decision.details["requested"] == 11


@pytest.mark.parametrize(
    ("limits", "usage", "prompt", "max_tokens", "n", "ceiling"),
    [
        (Limits(), UsageSnapshot(), 10, 500, 1, 500),  # unlimited: as asked
        (Limits(tokens_per_minute=100), UsageSnapshot(), 10, 500, 1, 90),
        (Limits(tokens_per_minute=100), UsageSnapshot(), 10, 500, 2, 45),  # n choices share it
        (Limits(tokens_per_minute=100), UsageSnapshot(), 10, 20, 1, 20),  # fits: untouched
        (Limits(tokens_per_day=50), UsageSnapshot(tokens_today=30), 5, 64, 1, 15),
        (Limits(tokens_per_day=50), UsageSnapshot(tokens_today=50), 5, 64, 1, 1),  # then denied
        (Limits(tokens_per_minute=100, tokens_per_day=40), UsageSnapshot(), 10, 500, 1, 30),
        (Limits(tokens_per_minute=5), UsageSnapshot(), 10, 500, 1, 1),  # prompt alone too big
    ],
)
def test_affordable_max_tokens_keeps_a_reservation_inside_every_token_limit(
    limits, usage, prompt, max_tokens, n, ceiling
):
    assert affordable_max_tokens(limits, usage, prompt, max_tokens, n) == ceiling


@pytest.mark.parametrize(
    ("limit", "loads_ago", "reset_in"),
    [
        (2, (3000, 100), 600.0),  # the oldest load leaves the hour
        (2, (100, 3000), 600.0),
        (2, (3500, 3000, 100), 600.0),  # over the limit: index count - limit leaves
        (1, (0,), 3600.0),
    ],
)
def test_loads_per_hour_is_a_period_quota_reset_when_a_load_leaves(limit, loads_ago, reset_in):
    limits, usage = Limits(loads_per_hour=limit), UsageSnapshot(recent_loads=ago(*loads_ago))
    decision = check_loads_per_hour(limits, usage, NOW)
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (403, "quota_exhausted")
    assert decision.retry_after is None
    assert decision.reset_at == pytest.approx(NOW + reset_in)
    assert decision.reset_at is not None
    assert check_loads_per_hour(limits, usage, decision.reset_at) == ALLOW


def test_loads_older_than_an_hour_do_not_count():
    usage = UsageSnapshot(recent_loads=ago(3600, 4000, 100))
    assert check_loads_per_hour(Limits(loads_per_hour=2), usage, NOW) == ALLOW


@pytest.mark.parametrize(
    ("used", "requested", "denied", "reset_at"),
    [
        (600, 400, False, None),  # exactly fills the quota
        (600, 401, True, MIDNIGHT),
        (1000, 1, True, MIDNIGHT),
        (0, 1001, True, None),  # larger than the whole quota: never, so no reset
    ],
)
def test_download_quota_counts_the_known_size(used, requested, denied, reset_at):
    usage = UsageSnapshot(download_bytes_today=used)
    decision = check_download_quota(Limits(download_bytes_per_day=1000), usage, NOW, requested)
    if not denied:
        assert decision == ALLOW
        return
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (403, "quota_exhausted")
    assert decision.reset_at == reset_at
    assert decision.details["limit"] == 1000
    assert decision.details["requested"] == requested
    assert str(requested) in decision.message


def test_period_quota_answers_403_not_429():
    full = UsageSnapshot(tokens_today=10, recent_loads=ago(1), download_bytes_today=10)
    limits = Limits(tokens_per_day=10, loads_per_hour=1, download_bytes_per_day=10)
    for decision in (
        check_tokens_per_day(limits, full, NOW, 1),
        check_loads_per_hour(limits, full, NOW),
        check_download_quota(limits, full, NOW, 1),
    ):
        assert isinstance(decision, Deny)
        assert decision.status == 403
        assert decision.retry_after is None
        assert decision.reset_at is not None and decision.reset_at > NOW


HEAVY = UsageSnapshot(
    recent_requests=ago(*range(0, 60, 1)),
    recent_tokens=tokens_ago((1, 10**9)),
    concurrent=10**6,
    tokens_today=10**12,
    recent_loads=ago(*range(0, 3600, 10)),
    download_bytes_today=10**15,
)

ALL_CHECKS = [
    lambda limits, usage: check_requests_per_minute(limits, usage, NOW),
    lambda limits, usage: check_tokens_per_minute(limits, usage, NOW, 10**9),
    lambda limits, usage: check_concurrency(limits, usage, 1.0),
    lambda limits, usage: check_tokens_per_day(limits, usage, NOW, 10**9),
    lambda limits, usage: check_loads_per_hour(limits, usage, NOW),
    lambda limits, usage: check_download_quota(limits, usage, NOW, 10**15),
]


@pytest.mark.parametrize("check", ALL_CHECKS)
def test_unlimited_never_denies(check):
    assert check(Limits(), HEAVY) == ALLOW


@pytest.mark.parametrize("check", ALL_CHECKS)
def test_a_limit_of_zero_allows_nothing_and_is_not_retried(check):
    zero = Limits(0, 0, 0, 0, 0, 0)
    decision = check(zero, UsageSnapshot())
    if check is ALL_CHECKS[-1]:  # a zero-byte download fits a zero quota; one byte does not
        decision = check_download_quota(zero, UsageSnapshot(), NOW, 1)
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (403, "quota_exhausted")
    assert decision.retry_after is None and decision.reset_at is None
