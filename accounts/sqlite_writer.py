"""One SQLite writer thread and a pool of read connections (after datasette's database.py).

Every write of the process goes through ``SQLiteWriter``: a thread that owns
the only write connection and runs queued callables one at a time, each in its
own ``BEGIN IMMEDIATE`` transaction, so writers never contend inside the
process and a caller's result means the transaction is committed.  Other
processes (the ``gateway keys`` command while the server runs) wait on the
database lock up to ``busy_timeout``.  Reads use ``ReadPool`` connections,
which in WAL mode never block and are never blocked by the writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Reply = Callable[[Any, BaseException | None], None]

BUSY_TIMEOUT_MS = 5000


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode with the gateway's pragmas."""
    if not path.exists():
        # The database holds key hashes and usage: keep it to its owner.
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        if read_only:
            conn.execute("PRAGMA query_only=ON")
        else:
            _wal(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _wal(conn: sqlite3.Connection) -> None:
    # Switching a new database to WAL takes an exclusive lock without waiting on
    # busy_timeout: when two processes open it at once, one retries here.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SQLiteWriter:
    """The single write connection, owned by a dedicated thread.

    Opening brings the schema up to date (``migrate``) on that thread; its
    error is raised by the constructor.
    """

    def __init__(self, path: Path, migrations: Sequence[str] = ()) -> None:
        self._path = path
        self._queue: queue.Queue[tuple[Callable[[sqlite3.Connection], Any], Reply] | None]
        self._queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main,
            args=(migrations, ready),
            name=f"sqlite-writer:{path.name}",
            daemon=True,
        )
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            self._closed = True
            raise

    def _main(self, migrations: Sequence[str], ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = connect(self._path)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        try:
            try:
                migrate(conn, migrations)
            except BaseException as exc:
                ready.set_exception(exc)
                return
            ready.set_result(None)
            while (job := self._queue.get()) is not None:
                fn, reply = job
                result, error = None, None
                try:
                    result = transaction(conn, fn)
                except BaseException as exc:
                    error = exc
                # An error here means the caller's event loop is gone: nobody to tell.
                with contextlib.suppress(Exception):
                    reply(result, error)
        finally:
            conn.close()

    def _submit(self, fn: Callable[[sqlite3.Connection], Any], reply: Reply) -> None:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a write job must not wait for another write job")
        with self._lock:
            if self._closed:
                raise RuntimeError("the database is closed")
            self._queue.put((fn, reply))

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a write transaction; return once it is committed."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def reply(result: Any, error: BaseException | None) -> None:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        self._submit(fn, reply)
        return future.result()

    async def arun(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``run`` for the event loop: no thread is blocked while the job waits.

        Cancelling the awaiting task does not cancel a queued write.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.cancelled():
                return
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        def reply(result: Any, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(settle, result, error)

        self._submit(fn, reply)
        return await future

    def close(self) -> None:
        """Finish the queued jobs, then close the connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may already have rolled back (disk full, ...)
            conn.execute("ROLLBACK")
        raise
    return result


class SchemaError(RuntimeError):
    """The database was written by a newer program (a later schema version)."""


def migrate(conn: sqlite3.Connection, migrations: Sequence[str]) -> None:
    """Bring the schema to version ``len(migrations)``: the missing scripts, one transaction.

    ``schema_version`` holds one row, the number of scripts applied; a new
    database is at version 0.
    """

    def apply(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        version = 0 if row is None else int(row[0])
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        if version > len(migrations):
            raise SchemaError(f"database schema v{version} is newer than v{len(migrations)}")
        for script in migrations[version:]:
            for statement in _statements(script):
                conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = ?", (len(migrations),))

    transaction(conn, apply)


def _statements(script: str) -> Iterable[str]:
    # executescript() would commit the open transaction first: run one statement at a time.
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement: {pending!r}")


class ReadPool:
    """Read-only connections lent to one thread at a time; idle ones are kept for reuse."""

    def __init__(self, path: Path, keep: int = 8) -> None:
        self._path = path
        self._keep = keep
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the database is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = connect(self._path, read_only=True)
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            with self._lock:
                keep = not self._closed and len(self._idle) < self._keep
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self.connection() as conn:
            return fn(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
