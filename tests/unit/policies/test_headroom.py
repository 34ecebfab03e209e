"""What is left of each limit, as the console shows a key holder."""

from __future__ import annotations

from policies.headroom import headroom
from policies.principal import Limits
from policies.usage import UsageSnapshot

NOW = 1_000_000.0


def by_name(limits: Limits, usage: UsageSnapshot) -> dict:
    return {h.name: h for h in headroom(limits, usage, NOW)}


def test_minute_windows_count_only_the_last_minute_and_free_up_with_the_oldest() -> None:
    usage = UsageSnapshot(
        recent_requests=(NOW - 70, NOW - 50, NOW - 10),
        recent_tokens=((NOW - 90, 500), (NOW - 30, 40), (NOW - 5, 2)),
    )
    rows = by_name(Limits(requests_per_minute=5, tokens_per_minute=100), usage)
    assert rows["requests_per_minute"].used == 2
    assert rows["requests_per_minute"].remaining == 3
    assert rows["requests_per_minute"].resets_at == NOW - 50 + 60
    assert rows["tokens_per_minute"].used == 42
    assert rows["tokens_per_minute"].resets_at == NOW - 30 + 60


def test_unlimited_has_no_remaining_and_overuse_is_never_negative() -> None:
    usage = UsageSnapshot(tokens_today=900, concurrent=3)
    rows = by_name(Limits(tokens_per_day=500), usage)
    assert rows["tokens_per_day"].remaining == 0
    assert rows["max_concurrent"].remaining is None and rows["max_concurrent"].used == 3


def test_day_quotas_reset_at_the_next_utc_midnight() -> None:
    rows = by_name(Limits(tokens_per_day=10), UsageSnapshot(tokens_today=1))
    assert rows["tokens_per_day"].resets_at == (NOW // 86400 + 1) * 86400
    assert rows["download_bytes_per_day"].resets_at is None  # nothing used
