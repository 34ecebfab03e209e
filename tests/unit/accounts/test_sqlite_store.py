"""The key store on real SQLite files: keys, usage, persistence, migrations, one writer."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from accounts.keys import hash_secret, parse_key
from accounts.sqlite_store import MIGRATIONS, SQLiteAccounts, ensure_admin_key
from accounts.sqlite_writer import SchemaError
from policies.principal import SCOPES, Limits, Principal

REPO = Path(__file__).resolve().parents[3]
T0 = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "gateway.db"


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteAccounts]:
    with SQLiteAccounts(db) as store:
        yield store


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


def test_secret_is_never_stored_in_plain_text(store, db):
    record, full_key = store.create_key("a", now=T0)
    secret = parse_key(full_key)[1]

    def stored_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in db.parent.glob("gateway.db*"))

    assert hash_secret(secret).encode() in stored_bytes()  # we are looking in the right place
    assert secret.encode() not in stored_bytes()
    store.close()
    assert secret.encode() not in stored_bytes()
    assert (db.stat().st_mode & 0o077) == 0  # key hashes and usage: owner only


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
    recent = store.usage_summary(key_id=a.id, since=T0 - DAY)
    assert [(r["model"], r["requests"], r["prompt_tokens"]) for r in recent] == [
        ("m1", 1, 7),
        ("m2", 1, 2),
    ]
    # Usage of a principal that is not a stored key (a JWT subject) is kept too.
    store.record_usage("jwt:carol", "m1", "/v1/chat/completions", 1, 1, 200, 1, T0)
    assert store.usage_summary(key_id="jwt:carol")[0]["name"] is None


def test_downloads_and_loads_persist_across_reopening(db):
    with SQLiteAccounts(db) as store:
        record, full_key = store.create_key("a", now=T0)
        store.record_download(record.id, "org/model", 5 * 10**9, T0 - DAY - 1)
        store.record_download(record.id, "org/model", 3 * 10**9, T0 - 60)
        store.record_download(record.id, "org/other", 10**9, T0 - 30)
        store.record_load(record.id, "m", T0 - 4000)
        store.record_load(record.id, "m", T0 - 100)
        store.record_load(record.id, "n", T0 - 50)
    with SQLiteAccounts(db) as store:
        assert store.authenticate(full_key, T0) == record
        assert store.download_bytes_since(record.id, T0 - DAY) == 4 * 10**9
        assert store.download_bytes_since(record.id, 0) == 9 * 10**9
        assert store.loads_since(record.id, T0 - 3600) == [T0 - 100, T0 - 50]
        assert store.loads_since("other", 0) == []


def test_an_older_schema_is_migrated_and_its_data_kept(db):
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    try:
        conn.executescript(MIGRATIONS[0])
        conn.executescript(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);"
            "INSERT INTO schema_version VALUES (1);"
        )
        secret = "s" * 43
        conn.execute(
            "INSERT INTO keys (id, name, secret_hash, scopes, models, rpm, created_at)"
            " VALUES ('0123abcd', 'old', ?, 'infer,load', '[\"*\"]', 7, ?)",
            (hash_secret(secret), T0),
        )
        conn.execute(
            "INSERT INTO usage (key_id, model, route, prompt_tokens, completion_tokens, status,"
            " duration_ms, at) VALUES ('0123abcd', 'm', '/v1/chat/completions', 3, 4, 200, 5, ?)",
            (T0,),
        )
        conn.commit()
    finally:
        conn.close()

    with SQLiteAccounts(db) as store:
        record = store.authenticate(f"gw-0123abcd-{secret}", T0)
        assert record is not None and record.limits.requests_per_minute == 7
        assert record.scopes == {"infer", "load"}
        assert store.tokens_since("0123abcd", 0) == 7
        store.record_download("0123abcd", "org/m", 10, T0)  # a table of the second migration
        store.record_load("0123abcd", "m", T0)
        assert store.download_bytes_since("0123abcd", 0) == 10

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
    assert len(MIGRATIONS) >= 2


def test_a_newer_schema_is_refused(db):
    SQLiteAccounts(db).close()
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute("UPDATE schema_version SET version = 99")
    finally:
        conn.close()
    with pytest.raises(SchemaError, match="newer"):
        SQLiteAccounts(db)


def test_concurrent_writers_from_many_threads_all_commit(store, db):
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


def test_two_stores_on_one_file_like_the_cli_beside_the_server(db):
    with SQLiteAccounts(db) as server, SQLiteAccounts(db) as cli:
        record, full_key = cli.create_key("a", now=T0)
        assert server.authenticate(full_key, T0) == record
        server.record_usage(record.id, "m", "/r", 1, 1, 200, 1, T0)
        cli.revoke(record.id, T0)
        assert server.authenticate(full_key, T0 + 1) is None
        assert cli.tokens_since(record.id, 0) == 2


def test_a_failed_write_rolls_back_and_the_writer_goes_on(store):
    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO loads (key_id, model, at) VALUES ('k', 'm', 1)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.run_write(insert_then_fail)
    assert store.loads_since("k", 0) == []
    store.record_load("k", "m", 2)
    assert store.loads_since("k", 0) == [2]


def test_ensure_admin_key_only_on_an_empty_store(store):
    full_key = ensure_admin_key(store, T0)
    assert full_key is not None
    admin = store.authenticate(full_key, T0)
    assert admin is not None and admin.name == "admin"
    assert admin.scopes == set(SCOPES) and admin.models == ("*",)
    assert ensure_admin_key(store, T0) is None
    store.revoke(admin.id, T0)
    assert ensure_admin_key(store, T0) is None  # a revoked key still counts: no new admin
    assert store.count_keys() == 1


def test_ensure_admin_key_skips_a_store_with_other_keys(store):
    store.create_key("a", now=T0)
    assert ensure_admin_key(store, T0) is None
    assert [r.name for r in store.list_keys()] == ["a"]


def test_closed_store_refuses_work(db):
    store = SQLiteAccounts(db)
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError):
        store.record_load("k", "m", 1)
    with pytest.raises(RuntimeError):
        store.count_keys()


@pytest.mark.anyio
async def test_async_usage_is_committed_when_the_await_returns(store, db):
    record, full_key = store.create_key("a", now=T0)
    assert await store.aauthenticate(full_key, T0) == record
    await asyncio.gather(
        *(store.arecord_usage(record.id, "m", "/r", 1, 2, 200, 3, T0 + i) for i in range(20))
    )
    await store.arecord_download(record.id, "org/m", 100, T0)
    await store.arecord_load(record.id, "m", T0)
    # Another connection (another process, say) sees it all at once.
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM usage").fetchone() == (20,)
    finally:
        conn.close()
    assert await store.atokens_since(record.id, 0) == 60
    assert await store.adownload_bytes_since(record.id, 0) == 100
    assert await store.aloads_since(record.id, 0) == [T0]
    with pytest.raises(sqlite3.IntegrityError):
        await store.arun_write(lambda conn: conn.execute("INSERT INTO loads DEFAULT VALUES"))
    assert await store.arun_read(lambda conn: conn.execute("SELECT 1").fetchone()[0]) == 1


OPEN_AND_WRITE = """
import sys, time
from pathlib import Path
from accounts.sqlite_store import SQLiteAccounts, ensure_admin_key
start = float(sys.argv[2])
while time.time() < start:
    pass
with SQLiteAccounts(Path(sys.argv[1])) as store:
    print("admin" if ensure_admin_key(store, 1.0) else "none")
    for i in range(20):
        store.record_usage("k", "m", "/r", 1, 0, 200, 1, 1.0)
"""


def test_processes_opening_a_new_file_at_once_make_one_schema_and_one_admin(db):
    # Like the server and a CLI command starting together: a new database must not
    # fail with "database is locked" while one of them switches it to WAL.
    start = time.time() + 1.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_WRITE, str(db), str(start)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [err for _, err in outputs]
    assert sorted(out.strip() for out, _ in outputs) == ["admin"] + ["none"] * 5
    with SQLiteAccounts(db) as store:
        assert store.count_keys() == 1
        assert store.tokens_since("k", 0) == 6 * 20
