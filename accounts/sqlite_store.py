"""Gateway keys and their usage, in one SQLite database (``<data_dir>/gateway.db``).

Writes go through the process's single writer thread (``sqlite_writer``) and
are committed when the call returns; reads use pooled read connections.  The
sync API serves the CLI; the ``a``-prefixed coroutines serve the server.
Secrets are never stored: only their SHA-256 (see ``accounts.keys``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from types import EllipsisType
from typing import Any, TypeVar

from accounts.admin_key import ensure_admin_key
from accounts.keys import new_key, parse_key
from accounts.limits import LIMIT_COLUMNS
from accounts.records import KeyRecord, authenticated, key_changes, new_key_columns, record_of
from accounts.sqlite_writer import ReadPool, SQLiteWriter
from policies.principal import Limits

T = TypeVar("T")

# Append only: a database at version N gets MIGRATIONS[N:] applied when opened.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,            -- comma list
        models TEXT NOT NULL,            -- JSON list of globs
        rpm INTEGER,
        tpm INTEGER,
        max_concurrent INTEGER,
        tokens_per_day INTEGER,
        loads_per_hour INTEGER,
        download_bytes_per_day INTEGER,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL
    );
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        route TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        status INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX usage_key_at ON usage (key_id, at);
    """,
    """
    CREATE TABLE downloads (
        id INTEGER PRIMARY KEY,
        key_id TEXT NOT NULL,
        repo TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX downloads_key_at ON downloads (key_id, at);
    CREATE TABLE loads (
        id INTEGER PRIMARY KEY,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX loads_key_at ON loads (key_id, at);
    """,
]


def _fetch(conn: sqlite3.Connection, key_id: str) -> KeyRecord:
    row = conn.execute("SELECT * FROM keys WHERE id = ?", (key_id,)).fetchone()
    if row is None:
        raise KeyError(key_id)
    return record_of(row)


class SQLiteAccounts:
    """Keys, usage, downloads and loads in the SQLite file at ``path`` (created or migrated)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer = SQLiteWriter(self.path, MIGRATIONS)
        self._reads = ReadPool(self.path)

    def unavailable(self) -> str | None:
        """Always usable: the file is local (its errors are the disk's, not a network's)."""
        return None

    def close(self) -> None:
        self._writer.close()
        self._reads.close()

    def __enter__(self) -> SQLiteAccounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- generic access ------------------------------------------------------------------
    def run_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` in a write transaction on the writer thread; committed on return."""
        return self._writer.run(fn)

    async def arun_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._writer.arun(fn)

    def run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._reads.read(fn)

    async def arun_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._reads.read, fn)

    def _scalar(self, sql: str, *params: Any) -> Any:
        return self._reads.read(lambda conn: conn.execute(sql, params).fetchone()[0])

    # -- keys ----------------------------------------------------------------------------
    def create_key(
        self,
        name: str,
        *,
        scopes: Iterable[str] = ("infer",),
        models: Iterable[str] = ("*",),
        limits: Limits | None = None,
        expires_at: float | None = None,
        now: float,
    ) -> tuple[KeyRecord, str]:
        """A new key; the full key is returned here once and never stored."""
        limits = limits or Limits()
        created = self._create(name, scopes, models, limits, expires_at, now, only_if_empty=False)
        assert created is not None
        return created

    def create_first_key(
        self, name: str, scopes: Iterable[str], models: Iterable[str], limits: Limits, now: float
    ) -> tuple[KeyRecord, str] | None:
        """A key, only if the store holds none (one write transaction); else ``None``."""
        return self._create(name, scopes, models, limits, None, now, only_if_empty=True)

    def _create(
        self,
        name: str,
        scopes: Iterable[str],
        models: Iterable[str],
        limits: Limits,
        expires_at: float | None,
        now: float,
        *,
        only_if_empty: bool,
    ) -> tuple[KeyRecord, str] | None:
        values = new_key_columns(name, scopes, models, limits, expires_at)
        columns = ", ".join(values)

        def insert(conn: sqlite3.Connection) -> tuple[KeyRecord, str] | None:
            if only_if_empty and conn.execute("SELECT 1 FROM keys LIMIT 1").fetchone():
                return None
            while True:
                key_id, full_key, secret_hash = new_key()
                try:
                    conn.execute(
                        f"INSERT INTO keys (id, secret_hash, created_at, {columns})"
                        f" VALUES (?, ?, ?{', ?' * len(values)})",
                        (key_id, secret_hash, now, *values.values()),
                    )
                except sqlite3.IntegrityError:  # an id already taken: draw again
                    continue
                return _fetch(conn, key_id), full_key

        return self._writer.run(insert)

    def authenticate(self, presented: str, now: float) -> KeyRecord | None:
        """The active key ``presented`` is, else ``None`` whatever was wrong with it."""
        parsed = parse_key(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        row = self._reads.read(
            lambda conn: conn.execute("SELECT * FROM keys WHERE id = ?", (key_id,)).fetchone()
        )
        return authenticated(row, secret, now)

    def get(self, key_id: str) -> KeyRecord | None:
        try:
            return self._reads.read(lambda conn: _fetch(conn, key_id))
        except KeyError:
            return None

    def list_keys(self) -> list[KeyRecord]:
        rows = self._reads.read(
            lambda conn: conn.execute("SELECT * FROM keys ORDER BY created_at, id").fetchall()
        )
        return [record_of(row) for row in rows]

    def count_keys(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM keys"))

    def update(
        self,
        key_id: str,
        *,
        name: str | None = None,
        scopes: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
        limits: dict[str, int | None] | None = None,
        expires_at: float | None | EllipsisType = ...,
    ) -> KeyRecord:
        """Change what is given; ``limits`` maps ``Limits`` field names, None = unlimited.

        ``expires_at=None`` removes the expiry; leave it out to keep it.  Unknown key: KeyError.
        """
        changes = key_changes(
            name=name, scopes=scopes, models=models, limits=limits, expires_at=expires_at
        )

        def apply(conn: sqlite3.Connection) -> KeyRecord:
            _fetch(conn, key_id)  # KeyError when unknown
            if changes:
                assignments = ", ".join(f"{column} = ?" for column in changes)
                conn.execute(
                    f"UPDATE keys SET {assignments} WHERE id = ?", (*changes.values(), key_id)
                )
            return _fetch(conn, key_id)

        return self._writer.run(apply)

    def revoke(self, key_id: str, now: float) -> KeyRecord:
        """Revoke a key (at once: the next ``authenticate`` refuses it); KeyError if unknown."""

        def apply(conn: sqlite3.Connection) -> KeyRecord:
            _fetch(conn, key_id)
            sql = "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
            conn.execute(sql, (now, key_id))
            return _fetch(conn, key_id)

        return self._writer.run(apply)

    # -- usage, downloads, loads ---------------------------------------------------------
    @staticmethod
    def _insert(sql: str, *params: Any) -> Callable[[sqlite3.Connection], None]:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(sql, params)

        return insert

    _USAGE_SQL = (
        "INSERT INTO usage (key_id, model, route, prompt_tokens, completion_tokens, status,"
        " duration_ms, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    _DOWNLOAD_SQL = "INSERT INTO downloads (key_id, repo, bytes, at) VALUES (?, ?, ?, ?)"
    _LOAD_SQL = "INSERT INTO loads (key_id, model, at) VALUES (?, ?, ?)"

    def record_usage(
        self,
        key_id: str,
        model: str,
        route: str,
        prompt_tokens: int,
        completion_tokens: int,
        status: int,
        duration_ms: int,
        now: float,
    ) -> None:
        """Commit one request's usage (returns once it is on disk, WAL-synchronous=NORMAL)."""
        row = (key_id, model, route, prompt_tokens, completion_tokens, status, duration_ms, now)
        self._writer.run(self._insert(self._USAGE_SQL, *row))

    async def arecord_usage(
        self,
        key_id: str,
        model: str,
        route: str,
        prompt_tokens: int,
        completion_tokens: int,
        status: int,
        duration_ms: int,
        now: float,
    ) -> None:
        row = (key_id, model, route, prompt_tokens, completion_tokens, status, duration_ms, now)
        await self._writer.arun(self._insert(self._USAGE_SQL, *row))

    def record_download(self, key_id: str, repo: str, bytes_: int, now: float) -> None:
        self._writer.run(self._insert(self._DOWNLOAD_SQL, key_id, repo, bytes_, now))

    async def arecord_download(self, key_id: str, repo: str, bytes_: int, now: float) -> None:
        await self._writer.arun(self._insert(self._DOWNLOAD_SQL, key_id, repo, bytes_, now))

    def record_load(self, key_id: str, model: str, now: float) -> None:
        self._writer.run(self._insert(self._LOAD_SQL, key_id, model, now))

    async def arecord_load(self, key_id: str, model: str, now: float) -> None:
        await self._writer.arun(self._insert(self._LOAD_SQL, key_id, model, now))

    def tokens_since(self, key_id: str, since: float) -> int:
        """Prompt plus completion tokens of ``key_id`` at or after ``since``."""
        sql = "SELECT TOTAL(prompt_tokens + completion_tokens) FROM usage WHERE key_id=? AND at>=?"
        return int(self._scalar(sql, key_id, since))

    def download_bytes_since(self, key_id: str, since: float) -> int:
        sql = "SELECT TOTAL(bytes) FROM downloads WHERE key_id = ? AND at >= ?"
        return int(self._scalar(sql, key_id, since))

    def loads_since(self, key_id: str, since: float) -> list[float]:
        """Times of ``key_id``'s loads at or after ``since``, oldest first."""
        sql = "SELECT at FROM loads WHERE key_id = ? AND at >= ? ORDER BY at"
        rows = self._reads.read(lambda conn: conn.execute(sql, (key_id, since)).fetchall())
        return [float(row[0]) for row in rows]

    def usage_summary(
        self, *, key_id: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Per key and model: key_id, name, model, requests, prompt/completion tokens, errors."""
        where: list[str] = []
        params: list[Any] = []
        if key_id is not None:
            where.append("u.key_id = ?")
            params.append(key_id)
        if since is not None:
            where.append("u.at >= ?")
            params.append(since)
        sql = (
            "SELECT u.key_id, k.name, u.model, COUNT(*) AS requests,"
            " SUM(u.prompt_tokens) AS prompt_tokens,"
            " SUM(u.completion_tokens) AS completion_tokens,"
            " SUM(u.status >= 400) AS errors"
            " FROM usage u LEFT JOIN keys k ON k.id = u.key_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY u.key_id, u.model ORDER BY u.key_id, u.model"
        )
        rows = self._reads.read(lambda conn: conn.execute(sql, params).fetchall())
        return [dict(row) for row in rows]

    def usage_by_day(self, *, since: float, key_id: str | None = None) -> list[dict[str, Any]]:
        """Per UTC day, key and model since ``since``: the columns of ``usage_summary``
        and ``day`` ("YYYY-MM-DD")."""
        where = "u.at >= ?" + (" AND u.key_id = ?" if key_id is not None else "")
        params: list[Any] = [since] + ([key_id] if key_id is not None else [])
        sql = (
            "SELECT strftime('%Y-%m-%d', u.at, 'unixepoch') AS day, u.key_id, k.name, u.model,"
            " COUNT(*) AS requests, TOTAL(u.prompt_tokens) AS prompt_tokens,"
            " TOTAL(u.completion_tokens) AS completion_tokens, SUM(u.status >= 400) AS errors"
            f" FROM usage u LEFT JOIN keys k ON k.id = u.key_id WHERE {where}"
            " GROUP BY day, u.key_id, u.model ORDER BY day, u.key_id, u.model"
        )
        rows = self._reads.read(lambda conn: conn.execute(sql, params).fetchall())
        counts = ("requests", "prompt_tokens", "completion_tokens", "errors")
        return [{**dict(row), **{c: int(row[c] or 0) for c in counts}} for row in rows]


__all__ = ["LIMIT_COLUMNS", "MIGRATIONS", "KeyRecord", "SQLiteAccounts", "ensure_admin_key"]
