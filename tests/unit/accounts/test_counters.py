"""Both counters (in memory, in Redis) held to the same answers; then what only the shared
Redis counters must do: several gateways racing for one key's limits, gateways that die,
odd key ids, and a Redis that stops and comes back.

The Redis cases run on a throwaway server (``tests.support.redis_server``) and are skipped
where Redis is not installed.  Times are explicit ``now`` values, except for the leases,
which run on the Redis server's clock: those tests use a short ``lease_ttl`` and wide
margins.
"""

from __future__ import annotations

import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from accounts.errors import LimitRaced, StoreUnavailable
from accounts.interfaces import Counters, TokenHold
from accounts.memory_counters import MemoryCounters
from accounts.redis_counters import CHECKED, RedisCounters
from policies.principal import Limits
from tests.support.redis_server import RedisServer, running_redis

REPO = Path(__file__).resolve().parents[3]
T0 = 1_700_000_000.0  # 80000 s into its UTC day
DAY = 86400.0
TODAY = (T0 // DAY) * DAY
TOMORROW = TODAY + DAY
KEY = "k_abc123"


class Ledger:
    """The usage ledger's period totals, as the counters read them: set per key and day."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, float], tuple[int, int, list[float]]] = {}
        self.calls: list[tuple[str, float]] = []
        self.delay = 0.0

    def set(self, since: float, tokens: int = 0, nbytes: int = 0, loads: Any = (), key=KEY):
        self.totals[key, since] = (tokens, nbytes, list(loads))

    def __call__(self, key_id: str, since: float) -> tuple[int, int, list[float]]:
        self.calls.append((key_id, since))
        time.sleep(self.delay)
        return self.totals.get((key_id, since), (0, 0, []))


class Fleet:
    """Opens ``RedisCounters`` ("gateways") on one fresh prefix of one server."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"t{secrets.token_hex(4)}:"
        self.opened: list[RedisCounters] = []

    def __call__(self, ledger: Ledger | None = None, **options: Any) -> RedisCounters:
        node = RedisCounters(self.url, ledger or Ledger(), prefix=self.prefix, **options)
        self.opened.append(node)
        return node

    def close(self) -> None:
        for node in self.opened:
            node.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway server for the session (``tests.support.redis_server``)."""
    with running_redis() as server:
        yield server


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[Fleet]:
    fleet = Fleet(redis_server.url)
    yield fleet
    fleet.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(params=["memory", "redis"])
def open_counters(request: pytest.FixtureRequest) -> Callable[[Ledger], Any]:
    """Opens counters of the kind under test on the test's ledger."""
    if request.param == "memory":
        return MemoryCounters
    fleet: Fleet = request.getfixturevalue("fleet")
    return fleet


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def test_both_are_counters(fleet, ledger):
    """Checked by mypy too: both implement ``accounts.interfaces.Counters``."""
    for counters in [MemoryCounters(ledger), fleet(ledger)]:
        typed: Counters = counters
        hold: TokenHold = typed.admit(KEY, T0, load=False)
        assert isinstance(hold.ref, str) and hold.key_id == KEY


# -- the same answers, whatever the counters -----------------------------------------------
def test_requests_stay_in_the_window_for_60_seconds(open_counters, ledger):
    counters = open_counters(ledger)
    counters.admit(KEY, T0, load=False)
    counters.admit(KEY, T0 + 30, load=False)
    assert counters.snapshot(KEY, T0 + 59.5).recent_requests == (T0, T0 + 30)
    assert counters.snapshot(KEY, T0 + 60).recent_requests == (T0 + 30,)
    assert counters.snapshot(KEY, T0 + 90).recent_requests == ()


def test_admit_counts_the_request_its_slot_and_its_reservation(open_counters, ledger):
    ledger.set(TODAY, tokens=500)
    counters = open_counters(ledger)
    counters.admit(KEY, T0, load=False, tokens=100)
    usage = counters.snapshot(KEY, T0 + 1)
    assert usage.recent_requests == (T0,)
    assert usage.recent_tokens == ((T0 + 1, 100),)
    assert usage.concurrent == 1
    assert usage.tokens_today == 600
    assert usage.recent_loads == ()


def test_open_reservation_is_reported_at_now_until_settled(open_counters, ledger):
    counters = open_counters(ledger)
    hold = counters.admit(KEY, T0, load=False, tokens=100)
    assert counters.snapshot(KEY, T0 + 10).recent_tokens == ((T0 + 10, 100),)
    assert counters.snapshot(KEY, T0 + 70).recent_tokens == ((T0 + 70, 100),)
    hold.settle(40)  # at its admission time, out of the window now
    assert counters.snapshot(KEY, T0 + 70).recent_tokens == ()
    assert counters.snapshot(KEY, T0 + 70).tokens_today == 40


def test_settled_reservation_keeps_its_admission_time(open_counters, ledger):
    counters = open_counters(ledger)
    hold = counters.admit(KEY, T0, load=False, tokens=100)
    hold.settle(40)
    assert counters.snapshot(KEY, T0 + 30).recent_tokens == ((T0, 40),)
    assert counters.snapshot(KEY, T0 + 60).recent_tokens == ()


def test_settle_first_call_wins(open_counters, ledger):
    counters = open_counters(ledger)
    hold = counters.admit(KEY, T0, load=False, tokens=100)
    hold.settle(30)
    hold.settle(90)
    hold.settle(0)
    usage = counters.snapshot(KEY, T0 + 1)
    assert usage.recent_tokens == ((T0, 30),)
    assert usage.tokens_today == 30


def test_settle_to_zero_gives_the_reservation_back(open_counters, ledger):
    ledger.set(TODAY, tokens=500)
    counters = open_counters(ledger)
    hold = counters.admit(KEY, T0, load=False, tokens=100)
    hold.settle(0)
    usage = counters.snapshot(KEY, T0 + 1)
    assert usage.tokens_today == 500
    assert usage.recent_tokens == ((T0, 0),)


def test_negative_settle_counts_as_zero(open_counters, ledger):
    counters = open_counters(ledger)
    hold = counters.admit(KEY, T0, load=False, tokens=100)
    hold.settle(-5)
    assert counters.snapshot(KEY, T0 + 1).tokens_today == 0


def test_finish_frees_the_slot_once(open_counters, ledger):
    counters = open_counters(ledger)
    first = counters.admit(KEY, T0, load=False)
    second = counters.admit(KEY, T0, load=False)
    assert counters.snapshot(KEY, T0).concurrent == 2
    counters.finish(first)
    counters.finish(first)
    assert counters.snapshot(KEY, T0).concurrent == 1
    counters.finish(second)
    assert counters.snapshot(KEY, T0).concurrent == 0


def test_tokens_today_include_open_reservations(open_counters, ledger):
    ledger.set(TODAY, tokens=500)
    counters = open_counters(ledger)
    first = counters.admit(KEY, T0, load=False, tokens=100)
    assert counters.snapshot(KEY, T0).tokens_today == 600
    counters.admit(KEY, T0 + 1, load=False, tokens=50)
    assert counters.snapshot(KEY, T0 + 1).tokens_today == 650
    first.settle(10)
    assert counters.snapshot(KEY, T0 + 1).tokens_today == 560


def test_day_is_seeded_from_the_ledger_once(open_counters, ledger):
    ledger.set(TODAY, tokens=500, nbytes=7)
    counters = open_counters(ledger)
    counters.snapshot(KEY, T0)
    hold = counters.admit(KEY, T0 + 1, load=False, tokens=10)
    hold.settle(10)
    counters.charge_download(KEY, 3, T0 + 2)
    usage = counters.snapshot(KEY, T0 + 3)
    assert (usage.tokens_today, usage.download_bytes_today) == (510, 10)
    assert ledger.calls == [(KEY, TODAY)]
    counters.snapshot(KEY, TOMORROW + 1)
    assert ledger.calls == [(KEY, TODAY), (KEY, TOMORROW)]


def test_new_day_starts_from_the_ledger_and_carries_open_reservations(open_counters, ledger):
    ledger.set(TODAY, tokens=500, nbytes=1000)
    ledger.set(TOMORROW, tokens=40)  # what other gateways committed since midnight
    counters = open_counters(ledger)
    still_open = counters.admit(KEY, TOMORROW - 10, load=False, tokens=100)
    done = counters.admit(KEY, TOMORROW - 9, load=False, tokens=30)
    done.settle(30)
    counters.charge_download(KEY, 200, TOMORROW - 8)
    usage = counters.snapshot(KEY, TOMORROW - 1)
    assert (usage.tokens_today, usage.download_bytes_today) == (630, 1200)

    usage = counters.snapshot(KEY, TOMORROW + 5)
    assert usage.tokens_today == 40 + 100
    assert usage.download_bytes_today == 0
    assert sorted(usage.recent_tokens) == [(TOMORROW - 9, 30), (TOMORROW + 5, 100)]
    assert usage.concurrent == 2  # slots carry over midnight
    still_open.settle(70)  # committed today: today's total takes the difference
    assert counters.snapshot(KEY, TOMORROW + 6).tokens_today == 40 + 70


def test_loads_stay_in_the_window_for_an_hour(open_counters, ledger):
    ledger.set(TODAY, loads=[T0 - 4000, T0 - 3500])
    counters = open_counters(ledger)
    assert counters.snapshot(KEY, T0).recent_loads == (T0 - 3500,)
    counters.admit(KEY, T0, load=True)
    counters.admit(KEY, T0 + 1, load=False)
    assert counters.snapshot(KEY, T0 + 1).recent_loads == (T0 - 3500, T0)
    assert counters.snapshot(KEY, T0 + 101).recent_loads == (T0,)
    assert counters.snapshot(KEY, T0 + 3600).recent_loads == ()


def test_download_bytes_add_to_the_days_total_from_the_ledger(open_counters, ledger):
    ledger.set(TODAY, nbytes=1000)
    counters = open_counters(ledger)
    counters.charge_download(KEY, 500, T0)
    assert counters.snapshot(KEY, T0).download_bytes_today == 1500
    counters.charge_download(KEY, 10, TOMORROW + 1)
    assert counters.snapshot(KEY, TOMORROW + 2).download_bytes_today == 10


def test_settle_ref_of_no_open_hold_changes_nothing(open_counters, ledger):
    counters = open_counters(ledger)
    hold = counters.admit(KEY, T0, load=False, tokens=100)
    before = counters.snapshot(KEY, T0 + 1)
    counters.settle_ref(KEY, "", 5)
    counters.settle_ref(KEY, "someone:7", 5)
    counters.settle_ref("other", hold.ref, 5)
    assert counters.snapshot(KEY, T0 + 1) == before


def test_keys_are_counted_apart(open_counters, ledger):
    ledger.set(TODAY, tokens=5, key="other")
    counters = open_counters(ledger)
    counters.admit(KEY, T0, load=True, tokens=10)
    usage = counters.snapshot("other", T0)
    assert usage.recent_requests == () and usage.recent_loads == ()
    assert (usage.concurrent, usage.tokens_today) == (0, 5)


# -- Redis: several gateways on one key ----------------------------------------------------
def race(nodes: list[RedisCounters], tries: int, admit: Callable[[RedisCounters], Any]):
    """``tries`` calls of ``admit`` per node, one thread per node, started together;
    (the holds, the limits raced)."""
    start = threading.Barrier(len(nodes))
    holds: list[Any] = []
    raced: list[str] = []
    errors: list[BaseException] = []

    def run(node: RedisCounters) -> None:
        start.wait()
        for _ in range(tries):
            try:
                holds.append(admit(node))
            except LimitRaced as exc:
                raced.append(exc.limit)
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return holds, raced


def test_requests_per_minute_raced_from_three_gateways_admit_exactly_the_limit(fleet):
    nodes = [fleet() for _ in range(3)]
    limits = Limits(requests_per_minute=10)
    holds, raced = race(nodes, 10, lambda node: node.admit(KEY, T0, load=False, limits=limits))
    assert len(holds) == 10
    assert raced == ["requests_per_minute"] * 20
    assert len(nodes[0].snapshot(KEY, T0).recent_requests) == 10
    assert nodes[1].snapshot(KEY, T0).concurrent == 10


def test_max_concurrent_holds_across_gateways_under_a_race(fleet):
    nodes = [fleet(), fleet()] * 4  # eight threads on two gateways
    limits = Limits(max_concurrent=2)
    lock = threading.Lock()
    live, peak, seen = 0, 0, []

    def admit_and_finish(node: RedisCounters) -> Any:
        nonlocal live, peak
        hold = node.admit(KEY, T0, load=False, limits=limits)
        with lock:
            live += 1
            peak = max(peak, live)
        seen.append(node.snapshot(KEY, T0).concurrent)
        time.sleep(0.002)
        with lock:
            live -= 1
        node.finish(hold)
        return hold

    holds, raced = race(nodes, 25, admit_and_finish)
    assert peak <= 2 and max(seen) <= 2
    assert len(holds) >= 2 and len(holds) + len(raced) == 200
    assert set(raced) <= {"max_concurrent"}
    assert nodes[0].snapshot(KEY, T0).concurrent == 0
    nodes[1].admit(KEY, T0, load=False, limits=limits)
    nodes[0].admit(KEY, T0, load=False, limits=limits)
    with pytest.raises(LimitRaced, match="max_concurrent"):
        nodes[1].admit(KEY, T0, load=False, limits=limits)


def test_tokens_per_day_raced_across_gateways_are_never_exceeded(fleet):
    ledger = Ledger()
    ledger.set(TODAY, tokens=100)
    nodes = [fleet(ledger) for _ in range(3)]
    limits = Limits(tokens_per_day=1100)
    holds, raced = race(
        nodes, 10, lambda node: node.admit(KEY, T0, load=False, tokens=100, limits=limits)
    )
    assert len(holds) == 10
    assert raced == ["tokens_per_day"] * 20
    assert nodes[2].snapshot(KEY, T0).tokens_today == 1100


def test_tokens_per_minute_raced_across_gateways_are_never_exceeded(fleet):
    nodes = [fleet() for _ in range(3)]
    limits = Limits(tokens_per_minute=1000)
    holds, raced = race(
        nodes, 10, lambda node: node.admit(KEY, T0, load=False, tokens=300, limits=limits)
    )
    assert len(holds) == 3
    assert raced == ["tokens_per_minute"] * 27
    assert sum(n for _, n in nodes[0].snapshot(KEY, T0).recent_tokens) == 900
    for hold in holds:
        hold.settle(100)  # what they really used makes room
    nodes[1].admit(KEY, T0 + 1, load=False, tokens=700, limits=limits)
    with pytest.raises(LimitRaced, match="tokens_per_minute"):
        nodes[1].admit(KEY, T0 + 1, load=False, tokens=1, limits=limits)
    nodes[1].admit(KEY, T0 + 60, load=False, tokens=300, limits=limits)  # the first three left


def test_tokens_per_minute_need_is_capped_at_the_limit(fleet):
    counters = fleet()
    limits = Limits(tokens_per_minute=1000)
    counters.admit(KEY, T0, load=False, tokens=5000, limits=limits)  # an empty window: fits
    with pytest.raises(LimitRaced, match="tokens_per_minute"):
        counters.admit(KEY, T0 + 59, load=False, tokens=5000, limits=limits)
    with pytest.raises(LimitRaced, match="tokens_per_minute"):
        counters.admit(KEY, T0 + 59, load=False, tokens=1, limits=Limits(tokens_per_minute=5000))


@pytest.mark.parametrize("limit", CHECKED)
def test_limit_of_zero_allows_nothing(fleet, limit):
    counters = fleet()
    with pytest.raises(LimitRaced) as raised:
        counters.admit(KEY, T0, load=True, tokens=0, limits=Limits(**{limit: 0}))
    assert raised.value.limit == limit
    assert counters.snapshot(KEY, T0).recent_requests == ()


def test_unlimited_fields_and_download_bytes_are_not_checked_at_admission(fleet):
    counters = fleet()
    limits = Limits(download_bytes_per_day=0)
    for i in range(50):
        counters.admit(KEY, T0 + i, load=True, tokens=10**6, limits=limits)
    assert counters.snapshot(KEY, T0 + 50).concurrent == 50


def test_loads_per_hour_checked_only_when_loading(fleet):
    counters = fleet()
    limits = Limits(loads_per_hour=1)
    counters.admit(KEY, T0, load=True, limits=limits)
    with pytest.raises(LimitRaced, match="loads_per_hour"):
        counters.admit(KEY, T0 + 3599, load=True, limits=limits)
    counters.admit(KEY, T0 + 3599, load=False, limits=limits)
    counters.admit(KEY, T0 + 3600, load=True, limits=limits)


@pytest.mark.parametrize(
    "limits",
    [
        Limits(requests_per_minute=1),
        Limits(max_concurrent=1),
        Limits(tokens_per_minute=100),
        Limits(tokens_per_day=100),
        Limits(loads_per_hour=1),
    ],
)
def test_raced_admission_counts_nothing(fleet, limits):
    counters = fleet()
    counters.admit(KEY, T0, load=True, tokens=80, limits=limits)
    before = counters.snapshot(KEY, T0 + 1)
    with pytest.raises(LimitRaced):
        counters.admit(KEY, T0 + 1, load=True, tokens=80, limits=limits)
    assert counters.snapshot(KEY, T0 + 1) == before


def test_two_gateways_seeding_the_day_at_once_count_it_once(fleet):
    ledger = Ledger()
    ledger.set(TODAY, tokens=500, nbytes=9, loads=[T0 - 10])
    ledger.delay = 0.05  # both read the ledger before either writes
    nodes = [fleet(ledger), fleet(ledger)]
    race(nodes, 1, lambda node: node.snapshot(KEY, T0))
    usage = nodes[0].snapshot(KEY, T0)
    assert (usage.tokens_today, usage.download_bytes_today) == (500, 9)
    assert usage.recent_loads == (T0 - 10,)
    assert len(ledger.calls) == 2
    nodes[1].snapshot(KEY, T0 + 1)
    assert len(ledger.calls) == 2


ODD_IDS = ["a:b", "a", "b", "a:b:", "{x}", "x", "}{", "k 1", "k", "ключ", "k" * 128, "61", "*"]


def test_odd_key_ids_do_not_collide(fleet, raw):
    counters = fleet()
    for i, key_id in enumerate(ODD_IDS):
        for _ in range(i + 1):
            counters.admit(key_id, T0, load=False)
    for i, key_id in enumerate(ODD_IDS):
        assert len(counters.snapshot(key_id, T0).recent_requests) == i + 1, key_id
    names = raw.keys(f"{fleet.prefix}*")
    pattern = re.escape(fleet.prefix) + r"\{[0-9a-f]+\}:(req|tok|amt|open|slots|loads|day)"
    assert names and all(re.fullmatch(pattern, name) for name in names)


def test_every_key_expires(fleet, raw):
    counters = fleet(lease_ttl=5.0)
    counters.admit(KEY, T0, load=True, tokens=10)
    counters.admit(KEY, T0, load=False, tokens=10).settle(3)
    counters.charge_download(KEY, 5, T0)
    longest = {"req": 120, "loads": 7200, "day": 2 * 86400}
    names = raw.keys(f"{fleet.prefix}*")
    assert len(names) == 7
    for name in names:
        ttl = raw.ttl(name)
        assert 0 < ttl <= longest.get(name.rsplit(":", 1)[1], 120 + 2 * 5), name


def test_hold_is_settled_by_the_gateway_its_request_was_forwarded_to(fleet, caplog):
    entry, peer = fleet(lease_ttl=1.0), fleet()
    hold = entry.admit(KEY, T0, load=False, tokens=100)
    assert hold.ref
    peer.settle_ref(KEY, hold.ref, 30)
    usage = peer.snapshot(KEY, T0 + 1)
    assert (usage.recent_tokens, usage.tokens_today) == (((T0, 30),), 30)
    time.sleep(0.5)  # the entry's heartbeat meets the settled hold: no alarm
    assert entry.snapshot(KEY, T0 + 1).concurrent == 1  # its slot is the entry's
    hold.settle(0)  # the entry's release without a record: the first settlement counted
    peer.settle_ref(KEY, hold.ref, 99)
    entry.finish(hold)
    usage = peer.snapshot(KEY, T0 + 1)
    assert (usage.recent_tokens, usage.tokens_today, usage.concurrent) == (((T0, 30),), 30, 0)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


def test_settle_ref_after_the_gateways_own_settle_is_a_no_op(fleet):
    entry, peer = fleet(), fleet()
    hold = entry.admit(KEY, T0, load=False, tokens=100)
    hold.settle(10)
    peer.settle_ref(KEY, hold.ref, 50)
    assert peer.snapshot(KEY, T0 + 1).tokens_today == 10


# -- Redis: gateways that die --------------------------------------------------------------
def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition()`` holds (polled); fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def test_dead_gateways_slot_is_freed_after_the_lease_while_live_leases_survive(fleet):
    live, dead = fleet(lease_ttl=1.0), fleet(lease_ttl=1.0)
    started = time.monotonic()
    kept = live.admit(KEY, T0, load=False, tokens=10)
    dead.admit(KEY, T0, load=False, tokens=10)
    dead.close(release=False)  # stops refreshing, gives nothing back: as if killed
    assert live.snapshot(KEY, T0).concurrent == 2
    wait_for(lambda: live.snapshot(KEY, T0).concurrent == 1, timeout=5)
    assert time.monotonic() - started >= 0.9  # it ran out; nothing released it early
    time.sleep(max(0.0, started + 3.5 - time.monotonic()))  # three and a half leases
    usage = live.snapshot(KEY, T0 + 1)
    assert usage.concurrent == 1
    assert (T0 + 1, 10) in usage.recent_tokens  # still open: reported at now
    live.finish(kept)
    assert live.snapshot(KEY, T0 + 1).concurrent == 0


def test_expired_open_hold_counts_its_reserved_amount(fleet):
    live, dead = fleet(lease_ttl=1.0), fleet(lease_ttl=1.0)
    dead.admit(KEY, T0, load=False, tokens=100)
    assert live.snapshot(KEY, T0 + 10).recent_tokens == ((T0 + 10, 100),)
    dead.close(release=False)
    wait_for(lambda: live.snapshot(KEY, T0 + 10).concurrent == 0, timeout=5)
    usage = live.snapshot(KEY, T0 + 10)
    assert usage.recent_tokens == ((T0, 100),)  # settled at its reservation, at its time
    assert usage.tokens_today == 100
    with pytest.raises(LimitRaced, match="tokens_per_minute"):
        live.admit(KEY, T0 + 10, load=False, tokens=100, limits=Limits(tokens_per_minute=150))
    usage = live.snapshot(KEY, T0 + 61)
    assert usage.recent_tokens == () and usage.tokens_today == 100


def test_settlement_after_the_lease_ran_out_is_a_no_op(fleet):
    live, dead = fleet(lease_ttl=1.0), fleet(lease_ttl=1.0)
    hold = dead.admit(KEY, T0, load=False, tokens=100)
    dead.close(release=False)
    time.sleep(1.2)  # run out, not yet pruned: no script ran for the key since
    live.settle_ref(KEY, hold.ref, 5)
    usage = live.snapshot(KEY, T0 + 1)
    assert (usage.recent_tokens, usage.tokens_today) == (((T0, 100),), 100)


KILLED = """
import sys, time
from accounts.redis_counters import RedisCounters
counters = RedisCounters(sys.argv[1], lambda key_id, since: (0, 0, []), prefix=sys.argv[2],
                         lease_ttl=1.0)
counters.admit("k_abc123", float(sys.argv[3]), load=False, tokens=100)
print("admitted", flush=True)
time.sleep(120)
"""


def test_killed_gateway_process_frees_its_slot_after_the_lease(fleet):
    command = [sys.executable, "-c", KILLED, fleet.url, fleet.prefix, repr(T0)]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "admitted"
            time.sleep(1.5)  # past its first lease: the heartbeat keeps it
            counters = fleet()
            assert counters.snapshot(KEY, T0).concurrent == 1
        finally:
            proc.kill()  # SIGKILL: no close, no finish
    wait_for(lambda: counters.snapshot(KEY, T0).concurrent == 0, timeout=5)
    assert counters.snapshot(KEY, T0 + 1).recent_tokens == ((T0, 100),)


def test_close_gives_back_this_gateways_live_leases(fleet):
    leaving, staying = fleet(), fleet()
    leaving.admit(KEY, T0, load=False, tokens=100)
    leaving.close()
    usage = staying.snapshot(KEY, T0 + 1)
    assert usage.concurrent == 0
    assert usage.recent_tokens == ((T0, 100),)  # an open hold given back counts in full


def test_holds_settle_and_finish_from_other_threads(fleet):
    counters = fleet()
    holds = [counters.admit(KEY, T0, load=False, tokens=10) for _ in range(40)]

    def release(hold: Any) -> None:
        hold.settle(1)
        counters.finish(hold)
        counters.finish(hold)

    threads = [threading.Thread(target=release, args=(hold,)) for hold in holds]
    threads += [threading.Thread(target=holds[0].settle, args=(5,))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = counters.snapshot(KEY, T0 + 1)
    assert (usage.concurrent, usage.tokens_today) == (0, 40)


# -- Redis: unavailable --------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, BaseException | None]:
    start = time.monotonic()
    try:
        fn()
    except BaseException as exc:
        return time.monotonic() - start, exc
    return time.monotonic() - start, None


def test_hung_redis_fails_fast_for_a_second_then_is_tried_again():
    with socket.socket() as listener:  # accepts connections (the backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        counters = RedisCounters(url, Ledger(), timeout=0.3)
        try:
            waited, exc = timed(lambda: counters.snapshot(KEY, T0))
            assert isinstance(exc, StoreUnavailable) and exc.store == "counters"
            assert waited >= 0.25  # it asked Redis and waited for the answer
            waited, exc = timed(lambda: counters.admit(KEY, T0, load=False))
            assert isinstance(exc, StoreUnavailable) and waited < 0.1  # no network
            assert "did not answer" in (counters.unavailable() or "")
            time.sleep(1.05)
            waited, exc = timed(lambda: counters.charge_download(KEY, 1, T0))
            assert isinstance(exc, StoreUnavailable) and waited >= 0.25  # tried again
        finally:
            counters.close()


def test_stopped_redis_is_unavailable_and_service_resumes_when_it_is_back():
    with running_redis() as server:
        counters = RedisCounters(server.url, Ledger(), timeout=0.5)
        try:
            hold = counters.admit(KEY, T0, load=False, tokens=10)
            assert counters.unavailable() is None
            server.stop()
            with pytest.raises(StoreUnavailable):
                counters.snapshot(KEY, T0)
            waited, exc = timed(lambda: counters.admit(KEY, T0, load=False))
            assert isinstance(exc, StoreUnavailable) and waited < 0.1
            counters.finish(hold)  # never raise: the lease runs out instead
            hold.settle(5)
            counters.settle_ref(KEY, hold.ref, 5)
            assert "unreachable" in (counters.unavailable() or "")
            server.start()
            resumed = time.monotonic()

            def admitted() -> bool:
                try:
                    counters.admit(KEY, T0, load=False)
                except StoreUnavailable:
                    return False
                return True

            wait_for(admitted, timeout=3)
            assert time.monotonic() - resumed <= 1.5
            assert counters.unavailable() is None
            assert counters.snapshot(KEY, T0).concurrent == 1  # a new, empty Redis
        finally:
            counters.close()
