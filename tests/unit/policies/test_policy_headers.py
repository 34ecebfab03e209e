"""OpenAI's x-ratelimit-* headers and their duration format."""

from __future__ import annotations

import pytest

from policies.decision import Deny
from policies.limits import check_requests_per_minute, format_reset, ratelimit_headers
from policies.principal import Limits
from policies.usage import UsageSnapshot

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1, "1s"),
        (59, "59s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (0.02, "20ms"),
        (0.001, "1ms"),
        (0.0004, "1ms"),  # rounded up: a reset is never understated
        (0.9999, "1s"),
        (1.5, "1.5s"),
        (61.25, "1m1.25s"),
        (3600, "1h0m0s"),
        (3723.5, "1h2m3.5s"),
        (0, "0s"),
        (-3, "0s"),
    ],
)
def test_reset_is_formatted_like_openai(seconds, text):
    assert format_reset(seconds) == text


def test_no_headers_for_an_unlimited_key():
    usage = UsageSnapshot(recent_requests=(NOW - 1,), recent_tokens=((NOW - 1, 50),))
    assert ratelimit_headers(Limits(), usage, NOW, 10) == {}


@pytest.mark.parametrize(
    ("limits", "prefixes"),
    [
        (Limits(requests_per_minute=60), {"requests"}),
        (Limits(tokens_per_minute=1000), {"tokens"}),
        (Limits(requests_per_minute=60, tokens_per_minute=1000), {"requests", "tokens"}),
        (Limits(max_concurrent=1, tokens_per_day=5, loads_per_hour=1), set()),
    ],
)
def test_headers_only_for_set_limits(limits, prefixes):
    headers = ratelimit_headers(limits, UsageSnapshot(), NOW, 10)
    expected = {
        f"x-ratelimit-{part}-{kind}"
        for kind in prefixes
        for part in ("limit", "remaining", "reset")
    }
    assert set(headers) == expected


def test_request_headers_count_this_request_and_reset_when_the_oldest_leaves():
    usage = UsageSnapshot(recent_requests=(NOW - 50, NOW - 10, NOW - 70))
    headers = ratelimit_headers(Limits(requests_per_minute=60), usage, NOW, 0)
    assert headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "57",
        "x-ratelimit-reset-requests": "10s",
    }


def test_first_request_in_an_empty_window_resets_in_a_minute():
    headers = ratelimit_headers(Limits(requests_per_minute=5), UsageSnapshot(), NOW, 0)
    assert headers["x-ratelimit-remaining-requests"] == "4"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"


@pytest.mark.parametrize(
    ("entries", "requested", "remaining", "reset"),
    [
        (((45, 100),), 200, "700", "15s"),
        ((), 0, "1000", "0s"),  # nothing counted: already in the initial state
        ((), 200, "800", "1m0s"),
        (((30, 900),), 5000, "0", "30s"),  # the request is capped at the limit; never negative
    ],
)
def test_token_headers(entries, requested, remaining, reset):
    usage = UsageSnapshot(recent_tokens=tuple((NOW - s, n) for s, n in entries))
    headers = ratelimit_headers(Limits(tokens_per_minute=1000), usage, NOW, requested)
    assert headers == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": remaining,
        "x-ratelimit-reset-tokens": reset,
    }


def test_reset_header_matches_retry_after_of_a_request_denial():
    limits = Limits(requests_per_minute=2)
    usage = UsageSnapshot(recent_requests=(NOW - 42, NOW - 5))
    decision = check_requests_per_minute(limits, usage, NOW)
    assert isinstance(decision, Deny) and decision.retry_after is not None
    headers = ratelimit_headers(limits, usage, NOW, 0)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == format_reset(decision.retry_after) == "18s"
