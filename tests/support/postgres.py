"""A throwaway PostgreSQL server for tests, from the installed binaries.

``running_postgres()`` runs ``initdb`` into a temporary directory and starts
``postgres`` on a Unix socket only (no TCP), with ``fsync=off``; it yields a
``PostgresServer`` that makes databases and their ``postgresql://`` URLs, and
stops the server (fast shutdown, then SIGKILL) and removes its files at the end.

PostgreSQL refuses to run as root.  As root (CI), the server runs as the
``postgres`` system user: its directory, under the system temporary directory
(not pytest's, which is private to root), is owned by that user, and the
subprocesses switch to it (``subprocess.Popen(user=..., group=...)``: the
process started is ``postgres`` itself, so the signals reach it).

``find_bindir()`` looks in ``$GATEWAY_TEST_PG_BINDIR``, ``pg_config --bindir``,
``/usr/lib/postgresql/<newest>/bin`` and ``PATH``; ``require_bindir()`` skips
the calling test when none has the binaries.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

BINARIES = ("initdb", "postgres")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def _has_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in BINARIES)


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, else ``None``."""
    candidates: list[Path] = []
    if configured := os.environ.get("GATEWAY_TEST_PG_BINDIR"):
        candidates.append(Path(configured))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(Path(out))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    return next((path for path in candidates if _has_binaries(path)), None)


def require_bindir() -> Path:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed: no initdb and postgres in $GATEWAY_TEST_PG_BINDIR,"
            " `pg_config --bindir`, /usr/lib/postgresql/*/bin or PATH"
            " (Debian: apt-get install postgresql)"
        )
    return bindir


def _free_port() -> int:
    # Only the socket's name (.s.PGSQL.<port>) uses it, but a free one avoids surprises.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    socket_dir: Path
    port: int
    user: str = "postgres"
    _command: list[Any] = field(default_factory=list)
    _run_as: dict[str, Any] = field(default_factory=dict)
    _log: Path | None = None
    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server (again, after ``stop``: the same data, socket and port)."""
        assert self._log is not None
        with self._log.open("ab") as out:
            self._proc = subprocess.Popen(
                self._command, stdout=out, stderr=subprocess.STDOUT, **self._run_as
            )
        _wait_until_ready(self, self._proc, self._log)

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended), as an outage would."""
        if self._proc is not None:
            _stop(self._proc)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql:///{database}?host={self.socket_dir}&port={self.port}&user={self.user}"

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self, name: str) -> str:
        """A new empty database ``name`` (a plain identifier); its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: lowercase letters, digits and _ only")
        with self._admin() as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _run_as(root_dir: Path) -> dict[str, Any]:
    """Popen arguments that run a command as the owner PostgreSQL accepts."""
    if os.geteuid() != 0:
        return {}
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("PostgreSQL refuses to run as root, and there is no `postgres` user")
    for path in [root_dir, *root_dir.rglob("*")]:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return {
        "user": owner.pw_uid,
        "group": owner.pw_gid,
        "extra_groups": [],
        "env": {**os.environ, "HOME": owner.pw_dir, "USER": "postgres", "LOGNAME": "postgres"},
    }


def _wait_until_ready(server: PostgresServer, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{log.read_text()}")
        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start in time:\n{log.read_text()}") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # fast shutdown: ends the sessions still open
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _initdb(bindir: Path, data: Path, log: Path, run_as: dict[str, Any]) -> None:
    command = [bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust"]
    command += ["-E", "UTF8", "--locale=C", "--no-sync"]
    with log.open("ab") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, **run_as)
    if result.returncode != 0:
        raise RuntimeError(f"initdb exited with {result.returncode}:\n{log.read_text()}")


@contextlib.contextmanager
def running_postgres(bindir: Path | None = None) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL server for the duration of the block (see the module docstring)."""
    bindir = bindir or require_bindir()
    # A short path of its own: a Unix socket's path must fit in about 100 bytes.
    root_dir = Path(tempfile.mkdtemp(prefix="gw-pg-"))
    try:
        data, sockets, log = root_dir / "data", root_dir / "sock", root_dir / "postgres.log"
        sockets.mkdir()
        log.touch()
        run_as = _run_as(root_dir)
        _initdb(bindir, data, log, run_as)
        port = _free_port()
        command: list[Any] = [bindir / "postgres", "-D", data, "-k", sockets, "-p", str(port)]
        for setting in [
            "listen_addresses=",
            "fsync=off",
            "full_page_writes=off",
            "max_connections=200",
            "shared_buffers=32MB",
        ]:
            command += ["-c", setting]
        server = PostgresServer(sockets, port, _command=command, _run_as=run_as, _log=log)
        try:
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root_dir, ignore_errors=True)
