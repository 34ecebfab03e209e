"""What only the SQLite store does: one file (owner-only, WAL), migrations, one writer thread.

The behaviour every store shares is held in ``test_stores.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from accounts.keys import hash_secret, parse_key
from accounts.sqlite_store import MIGRATIONS, SQLiteAccounts
from accounts.sqlite_writer import SchemaError

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


def test_a_failed_write_rolls_back_and_the_writer_goes_on(store):
    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO loads (key_id, model, at) VALUES ('k', 'm', 1)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.run_write(insert_then_fail)
    assert store.loads_since("k", 0) == []
    store.record_load("k", "m", 2)
    assert store.loads_since("k", 0) == [2]


@pytest.mark.anyio
async def test_async_usage_is_committed_when_the_await_returns(store, db):
    record, full_key = store.create_key("a", now=T0)
    assert store.authenticate(full_key, T0) == record
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
    assert store.tokens_since(record.id, 0) == 60
    assert store.download_bytes_since(record.id, 0) == 100
    assert store.loads_since(record.id, 0) == [T0]
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
