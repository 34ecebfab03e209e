"""Gateway keys and their usage in one PostgreSQL database, shared by several gateways.

``accounts.sqlite_store``'s methods, checks, errors and answers, for gateways on several
machines: a revocation through one node is refused by all at their next ``authenticate``,
and the quotas that span days add up every node's usage.

Connections come from a ``psycopg_pool.ConnectionPool`` in autocommit mode; each
write is one explicit transaction, committed when the call returns.  The sync API
serves the CLI; the ``a``-prefixed coroutines run it on a worker thread for the
server.  Opening brings the schema up to date (``MIGRATIONS``) in one transaction
that holds an advisory lock, so gateways starting together migrate it once; a
schema newer than this program is refused (``SchemaError``).

An unreachable server (``psycopg.OperationalError``, ``psycopg_pool.PoolTimeout``
after ``timeout`` seconds) surfaces as ``accounts.errors.StoreUnavailable``, which
the gateway answers with 503 (fail closed).  While it is down, calls raise it at
once instead of each waiting ``timeout``; one call each ``FAIL_FAST_S`` tries a
connection of its own, and once that succeeds the pool serves again, so service
resumes by itself when the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import EllipsisType
from typing import Any, TypeVar

import psycopg
from psycopg import Connection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from accounts.errors import StoreUnavailable
from accounts.keys import new_key, parse_key
from accounts.records import KeyRecord, authenticated, key_changes, new_key_columns, record_of
from accounts.sqlite_writer import SchemaError
from policies.principal import Limits

T = TypeVar("T")
Conn = Connection[DictRow]
STORE = "keys and usage (PostgreSQL)"
FAIL_FAST_S = 1.0

# Append only: a database at version N gets MIGRATIONS[N:] applied when opened.  SQLite's
# columns (times: double precision seconds; integers: 64-bit); ids, models sort bytewise.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE keys (
        id TEXT COLLATE "C" PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,            -- comma list
        models TEXT NOT NULL,            -- JSON list of globs
        rpm BIGINT,
        tpm BIGINT,
        max_concurrent BIGINT,
        tokens_per_day BIGINT,
        loads_per_hour BIGINT,
        download_bytes_per_day BIGINT,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION
    );
    CREATE TABLE usage (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key_id TEXT COLLATE "C" NOT NULL,
        model TEXT COLLATE "C" NOT NULL,
        route TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        status BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX usage_key_at ON usage (key_id, at);
    CREATE TABLE downloads (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key_id TEXT COLLATE "C" NOT NULL,
        repo TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX downloads_key_at ON downloads (key_id, at);
    CREATE TABLE loads (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key_id TEXT COLLATE "C" NOT NULL,
        model TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX loads_key_at ON loads (key_id, at);
    """,
]

# Advisory locks (transaction-scoped, per database): the first key is this program's
# class, apart from any other program's locks; the second names what is guarded.
_LOCKS = 0x6D6C7867  # "mlxg"
_MIGRATE = f"{_LOCKS}, 1"  # applying MIGRATIONS
_FIRST_KEY = f"{_LOCKS}, 2"  # "no key at all": exclusive to check-and-insert, shared to insert


def migrate(conn: Conn, migrations: Sequence[str]) -> None:
    """Bring the schema to version ``len(migrations)`` in one transaction, one opener at a time.

    ``schema_version`` holds one row, the number of scripts applied; a new database
    is at version 0.
    """
    with conn.transaction():
        conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATE})")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        version = 0 if row is None else int(row["version"])
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        if version > len(migrations):
            raise SchemaError(f"database schema v{version} is newer than v{len(migrations)}")
        for script in migrations[version:]:
            conn.execute(script)  # no parameters: several statements in one go
        conn.execute("UPDATE schema_version SET version = %s", (len(migrations),))


class PostgresAccounts:
    """Keys, usage, downloads and loads in the PostgreSQL database at ``url`` (migrated).

    ``url`` is a libpq connection string or ``postgresql://`` URL; ``timeout`` is how
    long a call waits for a connection before it fails (``PoolTimeout``).
    """

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 8, timeout: float = 10.0
    ) -> None:
        self._closed = False
        self._timeout = timeout
        self._url = url
        self._down: tuple[float, str] | None = None  # (since, why), monotonic
        self._down_lock = threading.Lock()
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            connection_class=Connection[DictRow],
            kwargs={"autocommit": True, "row_factory": dict_row},
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            check=ConnectionPool.check_connection,  # a server restart costs no failed call
            name="accounts",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
            with self._pool.connection() as conn:
                migrate(conn, MIGRATIONS)
        except BaseException as exc:
            self._pool.close()
            self._closed = True
            if isinstance(exc, psycopg.OperationalError):
                raise StoreUnavailable(STORE, _reason(exc)) from exc
            raise

    def close(self) -> None:
        self._closed = True
        self._pool.close()

    def __enter__(self) -> PostgresAccounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- access --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connection(self) -> Iterator[Conn]:
        if self._closed:
            raise RuntimeError("the database is closed")
        if self._down is not None:
            self._probe()
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise self._failed(exc) from exc
        with self._down_lock:
            self._down = None

    def _failed(self, exc: psycopg.OperationalError) -> StoreUnavailable:
        why = _reason(exc)
        with self._down_lock:
            self._down = (time.monotonic(), why)
        return StoreUnavailable(STORE, why)

    def _probe(self) -> None:
        """While the database is down: refuse at once, except for one caller a second,
        which tries a connection of its own (refused at once by a stopped server,
        instead of waiting out the pool's timeout like every call would)."""
        with self._down_lock:
            down = self._down
            if down is None:
                return
            if time.monotonic() - down[0] < FAIL_FAST_S:
                raise StoreUnavailable(STORE, down[1])
            self._down = (time.monotonic(), down[1])  # the others fail fast meanwhile
        try:
            psycopg.connect(self._url, connect_timeout=max(2, round(self._timeout))).close()
        except psycopg.OperationalError as exc:
            raise self._failed(exc) from exc

    def unavailable(self) -> str | None:
        """Why the database cannot be used now (a failure in the last second, or a
        ``SELECT 1`` that fails), else ``None``."""
        try:
            self._rows("SELECT 1")
        except StoreUnavailable as exc:
            return str(exc)
        return None

    def _write(self, fn: Callable[[Conn], T]) -> T:
        """``fn(conn)`` in one transaction; committed when this returns."""
        with self._connection() as conn, conn.transaction():
            return fn(conn)

    def _rows(self, sql: str, *params: Any) -> list[DictRow]:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _changed(self, sql: str, *params: Any) -> KeyRecord:
        """The key row that the write ``sql`` returns; KeyError (its id: the last
        parameter) when it returns none."""
        row = self._write(lambda conn: conn.execute(sql, params).fetchone())
        if row is None:
            raise KeyError(params[-1])
        return record_of(row)

    def _scalar(self, sql: str, *params: Any) -> Any:
        [row] = self._rows(sql, *params)
        return next(iter(row.values()))

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
        """A key, only if the database holds none (revoked ones count); else ``None``.

        Of gateways racing here, exactly one creates it: see ``_create``'s locks.
        """
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
        sql = (
            f"INSERT INTO keys (id, secret_hash, created_at, {', '.join(values)})"
            f" VALUES (%s, %s, %s{', %s' * len(values)})"
            " ON CONFLICT (id) DO NOTHING RETURNING *"
        )

        def insert(conn: Conn) -> tuple[KeyRecord, str] | None:
            # Every insert holds the first-key lock shared, the first key exclusive: the
            # check below then sees every key committed before it, and none can follow
            # until it commits.
            if only_if_empty:
                conn.execute(f"SELECT pg_advisory_xact_lock({_FIRST_KEY})")
                if conn.execute("SELECT 1 FROM keys LIMIT 1").fetchone():
                    return None
            else:
                conn.execute(f"SELECT pg_advisory_xact_lock_shared({_FIRST_KEY})")
            while True:
                key_id, full_key, secret_hash = new_key()
                row = conn.execute(sql, (key_id, secret_hash, now, *values.values())).fetchone()
                if row is not None:  # else an id already taken: draw again
                    return record_of(row), full_key

        return self._write(insert)

    def authenticate(self, presented: str, now: float) -> KeyRecord | None:
        """The active key ``presented`` is, else ``None`` whatever was wrong with it."""
        parsed = parse_key(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        rows = self._rows("SELECT * FROM keys WHERE id = %s", key_id)
        return authenticated(rows[0] if rows else None, secret, now)

    def get(self, key_id: str) -> KeyRecord | None:
        rows = self._rows("SELECT * FROM keys WHERE id = %s", key_id)
        return record_of(rows[0]) if rows else None

    def list_keys(self) -> list[KeyRecord]:
        return [record_of(row) for row in self._rows("SELECT * FROM keys ORDER BY created_at, id")]

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
        if not changes:
            return self._changed("SELECT * FROM keys WHERE id = %s", key_id)
        assignments = ", ".join(f"{column} = %s" for column in changes)
        sql = f"UPDATE keys SET {assignments} WHERE id = %s RETURNING *"
        return self._changed(sql, *changes.values(), key_id)

    def revoke(self, key_id: str, now: float) -> KeyRecord:
        """Revoke a key (at once, on every node: the next ``authenticate`` refuses it);
        KeyError if unknown.  A key revoked before keeps its first revocation time."""
        sql = "UPDATE keys SET revoked_at = COALESCE(revoked_at, %s) WHERE id = %s RETURNING *"
        return self._changed(sql, now, key_id)

    # -- usage, downloads, loads ---------------------------------------------------------
    def _insert(self, sql: str, *params: Any) -> None:
        self._write(lambda conn: conn.execute(sql, params))

    _USAGE_SQL = (
        "INSERT INTO usage (key_id, model, route, prompt_tokens, completion_tokens, status,"
        " duration_ms, at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    )
    _DOWNLOAD_SQL = "INSERT INTO downloads (key_id, repo, bytes, at) VALUES (%s, %s, %s, %s)"
    _LOAD_SQL = "INSERT INTO loads (key_id, model, at) VALUES (%s, %s, %s)"

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
        """Commit one request's usage (returns once the server has committed it)."""
        row = (key_id, model, route, prompt_tokens, completion_tokens, status, duration_ms, now)
        self._insert(self._USAGE_SQL, *row)

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
        await asyncio.to_thread(self._insert, self._USAGE_SQL, *row)

    def record_download(self, key_id: str, repo: str, bytes_: int, now: float) -> None:
        self._insert(self._DOWNLOAD_SQL, key_id, repo, bytes_, now)

    async def arecord_download(self, key_id: str, repo: str, bytes_: int, now: float) -> None:
        await asyncio.to_thread(self._insert, self._DOWNLOAD_SQL, key_id, repo, bytes_, now)

    def record_load(self, key_id: str, model: str, now: float) -> None:
        self._insert(self._LOAD_SQL, key_id, model, now)

    async def arecord_load(self, key_id: str, model: str, now: float) -> None:
        await asyncio.to_thread(self._insert, self._LOAD_SQL, key_id, model, now)

    def tokens_since(self, key_id: str, since: float) -> int:
        """Prompt plus completion tokens of ``key_id`` at or after ``since``."""
        sql = (
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage"
            " WHERE key_id = %s AND at >= %s"
        )
        return int(self._scalar(sql, key_id, since))

    def download_bytes_since(self, key_id: str, since: float) -> int:
        sql = "SELECT COALESCE(SUM(bytes), 0) FROM downloads WHERE key_id = %s AND at >= %s"
        return int(self._scalar(sql, key_id, since))

    def loads_since(self, key_id: str, since: float) -> list[float]:
        """Times of ``key_id``'s loads at or after ``since``, oldest first."""
        sql = "SELECT at FROM loads WHERE key_id = %s AND at >= %s ORDER BY at"
        return [float(row["at"]) for row in self._rows(sql, key_id, since)]

    def usage_summary(
        self, *, key_id: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Per key and model: key_id, name, model, requests, prompt/completion tokens, errors."""
        where: list[str] = []
        params: list[Any] = []
        if key_id is not None:
            where.append("u.key_id = %s")
            params.append(key_id)
        if since is not None:
            where.append("u.at >= %s")
            params.append(since)
        sql = (
            "SELECT u.key_id, k.name, u.model, COUNT(*) AS requests,"
            " SUM(u.prompt_tokens)::bigint AS prompt_tokens,"
            " SUM(u.completion_tokens)::bigint AS completion_tokens,"
            " COUNT(*) FILTER (WHERE u.status >= 400) AS errors"
            " FROM usage u LEFT JOIN keys k ON k.id = u.key_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY u.key_id, u.model, k.name ORDER BY u.key_id, u.model"
        )
        return [dict(row) for row in self._rows(sql, *params)]

    def usage_by_day(self, *, since: float, key_id: str | None = None) -> list[dict[str, Any]]:
        """Per UTC day, key and model since ``since``: the columns of ``usage_summary``
        and ``day`` ("YYYY-MM-DD")."""
        where = "u.at >= %s" + (" AND u.key_id = %s" if key_id is not None else "")
        params: list[Any] = [since] + ([key_id] if key_id is not None else [])
        day = "to_char(to_timestamp(u.at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        sql = (
            f"SELECT {day} AS day, u.key_id, k.name, u.model, COUNT(*) AS requests,"
            " COALESCE(SUM(u.prompt_tokens), 0)::bigint AS prompt_tokens,"
            " COALESCE(SUM(u.completion_tokens), 0)::bigint AS completion_tokens,"
            " COUNT(*) FILTER (WHERE u.status >= 400) AS errors"
            f" FROM usage u LEFT JOIN keys k ON k.id = u.key_id WHERE {where}"
            " GROUP BY 1, u.key_id, u.model, k.name ORDER BY 1, u.key_id, u.model"
        )
        return [dict(row) for row in self._rows(sql, *params)]


__all__ = ["MIGRATIONS", "PostgresAccounts", "SchemaError", "migrate"]


def _reason(exc: psycopg.OperationalError) -> str:
    """A short reason without the server's address or credentials."""
    if isinstance(exc, PoolTimeout):
        return "no connection to the database within the timeout"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "password" in first or "@" in first or "connection to server" in first:
        return "the database is unreachable"
    return f"the database failed: {first[:160]}"
