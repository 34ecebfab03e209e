"""Every store (SQLite file, PostgreSQL database) held to the same behaviour; then what only
the shared PostgreSQL store must do: many gateways opening, racing and revoking at once.

The PostgreSQL cases run on a throwaway server (``tests.support.postgres``) and are
skipped where PostgreSQL is not installed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import accounts.keys
import accounts.records
from accounts import postgres_store
from accounts.admin_key import ensure_admin_key
from accounts.errors import StoreUnavailable
from accounts.interfaces import Accounts
from accounts.keys import hash_secret, parse_key
from accounts.postgres_store import PostgresAccounts
from accounts.sqlite_store import SQLiteAccounts
from accounts.sqlite_writer import SchemaError
from policies.principal import SCOPES, Limits, Principal

T0 = 1_700_000_000.0
DAY = 86400.0

Opener = Callable[[], Any]


def first_key(store: Any, name: str = "first") -> Any:
    return store.create_first_key(name, ["infer"], ["*"], Limits(), T0)


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens another store on the test's one database (like a second gateway or the CLI)."""
    if request.param == "sqlite":
        db = tmp_path / "data" / "gateway.db"

        def open_one() -> Any:
            return SQLiteAccounts(db)
    else:
        url = request.getfixturevalue("postgres_url")

        def open_one() -> Any:
            return PostgresAccounts(url)

    opened: list[Any] = []

    def tracked() -> Any:
        opened.append(open_one())
        return opened[-1]

    yield tracked
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Opener) -> Accounts:
    return open_store()


# -- the same behaviour, whatever the store ------------------------------------------------
def test_created_key_authenticates_to_its_record_and_principal(store):
    limits = Limits(requests_per_minute=60, download_bytes_per_day=10**9)
    record, full_key = store.create_key(
        "alice", scopes={"infer", "load"}, models=["tiny-*", "default"], limits=limits, now=T0
    )
    assert full_key.startswith(f"gw-{record.id}-")
    found = store.authenticate(full_key, T0 + 1)
    assert found == record == store.get(record.id)
    assert found.principal() == Principal(
        record.id, "alice", frozenset({"infer", "load"}), ("tiny-*", "default"), limits
    )
    assert store.list_keys() == [record]
    assert store.count_keys() == 1
    assert store.get("00000000") is None


def test_largest_limits_and_fractional_times_come_back_exactly(store):
    top = 2**53 - 1
    limits = Limits(**{field: top for field in Limits.__dataclass_fields__})
    record, full_key = store.create_key("a", limits=limits, expires_at=T0 + 0.125, now=T0 + 0.5)
    assert (record.limits, record.created_at, record.expires_at) == (limits, T0 + 0.5, T0 + 0.125)
    assert store.authenticate(full_key, T0) == record


def test_wrong_secret_tampered_id_and_garbage_do_not_authenticate(store):
    record, full_key = store.create_key("a", now=T0)
    other, other_key = store.create_key("b", now=T0)
    key_id, secret = parse_key(full_key)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for presented in [
        f"gw-{key_id}-{flipped}",
        f"gw-{other.id}-{secret}",  # a real id with another key's secret
        f"gw-{'f' * 8 if key_id != 'f' * 8 else 'e' * 8}-{secret}",  # no such id
        full_key + "x",
        full_key.upper(),
        "",
        "Bearer " + full_key,
        None,
        12,
    ]:
        assert store.authenticate(presented, T0) is None, presented
    assert store.authenticate(other_key, T0) == other


def test_an_unknown_id_is_compared_against_a_dummy_hash_to_take_the_same_time(store, monkeypatch):
    _, full_key = store.create_key("a", now=T0)
    _, secret = parse_key(full_key)
    compared: list[str] = []

    def verify(presented: str, stored_hash: str) -> bool:
        compared.append(stored_hash)
        return accounts.keys.verify(presented, stored_hash)

    monkeypatch.setattr(accounts.records, "verify", verify)
    unknown = "0" * 8 if not full_key.startswith("gw-00000000") else "1" * 8
    assert store.authenticate(f"gw-{unknown}-{secret}", T0) is None
    assert store.authenticate(full_key, T0) is not None
    assert compared == [hash_secret(""), hash_secret(secret)]


def test_revoked_and_expired_keys_stop_authenticating(store):
    record, full_key = store.create_key("a", expires_at=T0 + DAY, now=T0)
    assert store.authenticate(full_key, T0 + DAY - 1) is not None
    assert store.authenticate(full_key, T0 + DAY) is None  # expiry is exclusive
    assert store.update(record.id, expires_at=None).expires_at is None
    assert store.authenticate(full_key, T0 + 2 * DAY) is not None

    revoked = store.revoke(record.id, T0 + 5)
    assert revoked.revoked_at == T0 + 5 and not revoked.active(T0 + 6)
    assert store.authenticate(full_key, T0 + 6) is None
    assert store.revoke(record.id, T0 + 9).revoked_at == T0 + 5  # the first revocation stays
    with pytest.raises(KeyError):
        store.revoke("00000000", T0)


def test_update_changes_only_what_is_given(store):
    record, full_key = store.create_key(
        "a", limits=Limits(requests_per_minute=10, tokens_per_day=1000), now=T0
    )
    updated = store.update(record.id, limits={"tokens_per_day": None, "loads_per_hour": 3})
    assert updated.limits == Limits(requests_per_minute=10, loads_per_hour=3)
    updated = store.update(record.id, name="b", scopes=["infer", "download"], models=["m"])
    assert (updated.name, updated.scopes, updated.models) == ("b", {"infer", "download"}, ("m",))
    assert updated.limits == Limits(requests_per_minute=10, loads_per_hour=3)
    assert updated.created_at == T0 and updated.expires_at is None
    assert store.authenticate(full_key, T0) == updated
    assert store.update(record.id) == updated
    with pytest.raises(KeyError):
        store.update("00000000", name="x")
    with pytest.raises(KeyError):
        store.update("00000000")


@pytest.mark.parametrize(
    "change",
    [
        {"scopes": ["infer", "root"]},
        {"scopes": []},
        {"models": []},
        {"models": [""]},
        {"name": " "},
        {"limits": {"requests_per_minute": -1}},
        {"limits": {"requests_per_minute": 1.5}},
        {"limits": {"requests_per_minute": 2**53}},
        {"limits": {"rpm": 5}},
    ],
)
def test_invalid_values_are_refused_and_change_nothing(store, change):
    record, _ = store.create_key("a", now=T0)
    with pytest.raises(ValueError):
        store.update(record.id, **change)
    assert store.list_keys() == [record]
    values = {"name": "n", "scopes": ["infer"], "models": ["*"], **change}
    limits = values.pop("limits", {})
    with pytest.raises((ValueError, TypeError)):
        store.create_key(**values, limits=Limits(**limits), now=T0)
    assert store.list_keys() == [record]


def test_an_unknown_limit_name_is_refused_by_name(store):
    record, _ = store.create_key("a", now=T0)
    with pytest.raises(ValueError, match=r"limits: unknown \['rpm'\]; known: \["):
        store.update(record.id, limits={"rpm": 5})
    with pytest.raises(ValueError, match="expires_at"):
        store.update(record.id, expires_at=float("inf"))


def test_a_single_string_is_not_taken_for_a_list(store):
    with pytest.raises(TypeError):
        store.create_key("a", scopes="infer", now=T0)
    with pytest.raises(TypeError):
        store.create_key("a", models="*", now=T0)


def test_usage_sums_by_window_and_summary_per_key_and_model(store):
    a, _ = store.create_key("a", now=T0)
    b, _ = store.create_key("b", now=T0)
    store.record_usage(a.id, "m1", "/v1/chat/completions", 10, 5, 200, 30, T0 - DAY - 1)
    store.record_usage(a.id, "m1", "/v1/chat/completions", 7, 3, 200, 20, T0 - 10)
    store.record_usage(a.id, "m2", "/v1/messages", 2, 0, 429, 1, T0 - 5)
    store.record_usage(b.id, "m1", "/v1/completions", 100, 100, 200, 90, T0 - 1)
    assert store.tokens_since(a.id, T0 - DAY) == 12
    assert store.tokens_since(a.id, T0 - 10) == 12  # the window includes its start
    assert store.tokens_since(a.id, 0) == 27
    assert store.tokens_since(b.id, T0) == 0
    assert store.tokens_since("nobody", 0) == 0

    summary = store.usage_summary()
    assert sorted(summary, key=lambda r: r["name"]) == [
        {
            "key_id": a.id,
            "name": "a",
            "model": "m1",
            "requests": 2,
            "prompt_tokens": 17,
            "completion_tokens": 8,
            "errors": 0,
        },
        {
            "key_id": a.id,
            "name": "a",
            "model": "m2",
            "requests": 1,
            "prompt_tokens": 2,
            "completion_tokens": 0,
            "errors": 1,
        },
        {
            "key_id": b.id,
            "name": "b",
            "model": "m1",
            "requests": 1,
            "prompt_tokens": 100,
            "completion_tokens": 100,
            "errors": 0,
        },
    ]
    assert summary == sorted(summary, key=lambda r: (r["key_id"], r["model"]))
    assert all(
        type(v) is int
        for r in summary
        for k, v in r.items()
        if k not in {"key_id", "name", "model"}
    )
    recent = store.usage_summary(key_id=a.id, since=T0 - DAY)
    assert [(r["model"], r["requests"], r["prompt_tokens"]) for r in recent] == [
        ("m1", 1, 7),
        ("m2", 1, 2),
    ]
    # Usage of a principal that is not a stored key (a JWT subject) is kept too.
    store.record_usage("jwt:carol", "m1", "/v1/chat/completions", 1, 1, 200, 1, T0)
    assert store.usage_summary(key_id="jwt:carol")[0]["name"] is None
    assert store.usage_summary(key_id="nobody") == []


def test_summary_sorts_models_bytewise(store):
    for model in ["b", "B", "a/x", "a-x", "_"]:
        store.record_usage("k", model, "/r", 1, 0, 200, 1, T0)
    assert [r["model"] for r in store.usage_summary()] == sorted(["b", "B", "a/x", "a-x", "_"])


def test_downloads_and_loads_persist_across_reopening(open_store):
    with open_store() as store:
        record, full_key = store.create_key("a", now=T0)
        store.record_download(record.id, "org/model", 5 * 10**9, T0 - DAY - 1)
        store.record_download(record.id, "org/model", 3 * 10**9, T0 - 60)
        store.record_download(record.id, "org/other", 10**9, T0 - 30)
        store.record_load(record.id, "m", T0 - 4000)
        store.record_load(record.id, "m", T0 - 100)
        store.record_load(record.id, "n", T0 - 50)
    with open_store() as store:
        assert store.authenticate(full_key, T0) == record
        assert store.download_bytes_since(record.id, T0 - DAY) == 4 * 10**9
        assert store.download_bytes_since(record.id, 0) == 9 * 10**9
        assert store.download_bytes_since("other", 0) == 0
        assert store.loads_since(record.id, T0 - 3600) == [T0 - 100, T0 - 50]
        assert store.loads_since("other", 0) == []


def test_concurrent_writers_from_many_threads_all_commit(store):
    record, _ = store.create_key("a", now=T0)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(50):
                store.record_usage(record.id, f"m{n}", "/r", 1, 2, 200, i, T0 + i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.tokens_since(record.id, 0) == 4 * 50 * 3
    assert [r["requests"] for r in store.usage_summary()] == [50, 50, 50, 50]


def test_a_revocation_through_one_store_is_seen_by_another_at_once(open_store):
    # Two gateways on one database (or the CLI beside the server).
    server, cli = open_store(), open_store()
    record, full_key = cli.create_key("a", now=T0)
    assert server.authenticate(full_key, T0) == record
    server.record_usage(record.id, "m", "/r", 1, 1, 200, 1, T0)
    assert cli.tokens_since(record.id, 0) == 2
    cli.revoke(record.id, T0)
    assert server.authenticate(full_key, T0 + 1) is None
    assert server.get(record.id).revoked_at == T0


def test_create_first_key_only_on_a_store_without_any_key(store):
    limits = Limits(tokens_per_day=5)
    created = store.create_first_key("root", ["admin"], ["m*"], limits, T0)
    assert created is not None
    record, full_key = created
    assert (record.name, record.scopes, record.models, record.limits) == (
        "root",
        {"admin"},
        ("m*",),
        limits,
    )
    assert store.authenticate(full_key, T0) == record
    assert first_key(store) is None
    store.revoke(record.id, T0)
    assert first_key(store) is None  # a revoked key still counts
    assert store.count_keys() == 1
    with pytest.raises(ValueError):
        first_key(store, " ")


def test_ensure_admin_key_only_on_an_empty_store(store):
    full_key = ensure_admin_key(store, T0)
    assert full_key is not None
    admin = store.authenticate(full_key, T0)
    assert admin is not None and admin.name == "admin"
    assert admin.scopes == set(SCOPES) and admin.models == ("*",)
    assert admin.limits == Limits() and admin.expires_at is None
    assert ensure_admin_key(store, T0) is None
    store.revoke(admin.id, T0)
    assert ensure_admin_key(store, T0) is None  # a revoked key still counts: no new admin
    assert store.count_keys() == 1


def test_ensure_admin_key_skips_a_store_with_other_keys(store):
    store.create_key("a", now=T0)
    assert ensure_admin_key(store, T0) is None
    assert [r.name for r in store.list_keys()] == ["a"]


def test_closed_store_refuses_work(open_store):
    store = open_store()
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError):
        store.record_load("k", "m", 1)
    with pytest.raises(RuntimeError):
        store.count_keys()


@pytest.mark.anyio
async def test_async_usage_is_committed_when_the_await_returns(open_store):
    store, other = open_store(), open_store()
    record, full_key = store.create_key("a", now=T0)
    assert store.authenticate(full_key, T0) == record
    assert store.authenticate("gw-nonsense", T0) is None
    await asyncio.gather(
        *(store.arecord_usage(record.id, "m", "/r", 1, 2, 200, 3, T0 + i) for i in range(20))
    )
    await store.arecord_download(record.id, "org/m", 100, T0)
    await store.arecord_load(record.id, "m", T0)
    # Another store (another gateway, say) sees it all at once.
    assert other.usage_summary()[0]["requests"] == 20
    assert other.tokens_since(record.id, 0) == 60
    assert other.download_bytes_since(record.id, 0) == 100
    assert other.loads_since(record.id, 0) == [T0]


# -- PostgreSQL: one database shared by several gateways -----------------------------------
def _in_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """``fn(i)`` for i < n, all let go at once; their results (or what they raised)."""
    start = threading.Barrier(n)
    results: list[Any] = [None] * n

    def work(i: int) -> None:
        try:
            start.wait()
            results[i] = fn(i)
        except BaseException as exc:  # returned to the test
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_gateways_opening_a_new_database_at_once_migrate_it_once(postgres_url):
    stores = _in_threads(6, lambda _: PostgresAccounts(postgres_url))
    try:
        assert all(isinstance(s, PostgresAccounts) for s in stores), stores
    finally:
        for s in stores:
            if isinstance(s, PostgresAccounts):
                s.close()
    assert _query(postgres_url, "SELECT version FROM schema_version") == [
        (len(postgres_store.MIGRATIONS),)
    ]
    tables = _query(
        postgres_url,
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' ORDER BY table_name",
    )
    assert tables == [("downloads",), ("keys",), ("loads",), ("schema_version",), ("usage",)]


def test_reopening_applies_no_migration_again_and_keeps_the_data(postgres_url):
    with PostgresAccounts(postgres_url) as store:
        record, full_key = store.create_key("a", now=T0)
    with PostgresAccounts(postgres_url) as store:
        assert store.authenticate(full_key, T0) == record
    assert _query(postgres_url, "SELECT COUNT(*) FROM schema_version") == [(1,)]


def test_a_newer_schema_is_refused(postgres_url):
    PostgresAccounts(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaError, match="newer"):
        PostgresAccounts(postgres_url)


def test_the_first_key_raced_by_eight_threads_on_two_stores_is_created_once(postgres_url):
    with PostgresAccounts(postgres_url) as a, PostgresAccounts(postgres_url) as b:
        results = _in_threads(8, lambda i: first_key(a if i % 2 else b, f"admin{i}"))
        assert not [r for r in results if isinstance(r, BaseException)], results
        created = [r for r in results if r is not None]
        assert len(created) == 1
        assert a.list_keys() == b.list_keys() == [created[0][0]]


def test_the_first_key_waits_for_a_key_being_created_elsewhere_then_declines(postgres_url):
    # A create_key in flight on another gateway: inserted, not yet committed.
    with PostgresAccounts(postgres_url) as store, psycopg.connect(postgres_url) as other:
        other.execute(f"SELECT pg_advisory_xact_lock_shared({postgres_store._FIRST_KEY})")
        other.execute(
            "INSERT INTO keys (id, name, secret_hash, scopes, models, created_at)"
            " VALUES ('0123abcd', 'other', 'x', 'infer', '[\"*\"]', 1)"
        )
        result: list[Any] = []
        first = threading.Thread(target=lambda: result.append(first_key(store)))
        first.start()
        waiting = "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        deadline = time.monotonic() + 10
        while _query(postgres_url, waiting) != [(1,)]:  # the first key waits on it
            assert time.monotonic() < deadline and first.is_alive()
            time.sleep(0.01)
        assert result == []
        other.commit()
        first.join(10)
    assert result == [None]


def test_usage_is_committed_when_record_usage_returns(postgres_url):
    with PostgresAccounts(postgres_url) as store:
        for i in range(5):
            store.record_usage("k", "m", "/r", 1, 2, 200, 3, T0 + i)
            # Another session (another gateway's) sees the row at once.
            assert _query(postgres_url, "SELECT COUNT(*) FROM usage") == [(i + 1,)]
        store.record_download("k", "org/m", 7, T0)
        store.record_load("k", "m", T0)
        assert _query(postgres_url, "SELECT SUM(bytes) FROM downloads") == [(7,)]
        assert _query(postgres_url, "SELECT COUNT(*) FROM loads") == [(1,)]


def test_the_secret_is_never_stored(postgres_url):
    with PostgresAccounts(postgres_url) as store:
        _, full_key = store.create_key("a", now=T0)
    secret = parse_key(full_key)[1]
    [row] = _query(postgres_url, "SELECT * FROM keys")
    assert hash_secret(secret) in row
    assert not any(secret in str(value) for value in row)


def test_an_unreachable_server_fails_to_open_quickly(tmp_path):
    url = f"postgresql:///gateway?host={tmp_path}&port=1&user=postgres"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        PostgresAccounts(url, timeout=1.0)
    assert time.monotonic() - started < 10
    assert str(tmp_path) not in str(raised.value)  # says what failed, not where
