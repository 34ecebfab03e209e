"""A real gateway for end-to-end tests: ``python -m gateway serve`` on a free loopback port."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from accounts.interfaces import Accounts
from policies.principal import Limits

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def console_htmx() -> str:
    """htmx for every test server's console, fetched from PyPI once per run (an empty
    path, so nothing refreshes live, where PyPI cannot be reached)."""
    from gateway.console.assets import fetch_htmx

    cache = Path(os.environ.get("GATEWAY_TEST_CACHE", REPO / ".cache")) / "downloads"
    path = fetch_htmx(cache)
    return str(path) if path is not None else str(cache / "htmx-unavailable.js")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (the gateway's workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SharedStores:
    """``--shared-stores``: every gateway of the suite on PostgreSQL and Redis.

    Each data dir gets its own database and its own Redis key prefix, made the first
    time anything asks for them (a key created before its gateway starts lands in
    the database that gateway will use)."""

    def __init__(self, postgres: Any, redis_url: str) -> None:
        self.postgres = postgres
        self.redis_url = redis_url
        self._urls: dict[Path, str] = {}

    def _name(self, data_dir: Path) -> str:
        import hashlib

        return "d_" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]

    def accounts_url(self, data_dir: Path) -> str:
        data_dir = data_dir.resolve()
        if data_dir not in self._urls:
            self._urls[data_dir] = self.postgres.create_database(self._name(data_dir))
        return self._urls[data_dir]

    def env(self, data_dir: Path) -> dict[str, str]:
        return {
            "GATEWAY_ACCOUNTS_URL": self.accounts_url(data_dir),
            "GATEWAY_COUNTERS_URL": self.redis_url,
            "GATEWAY_COUNTERS_PREFIX": self._name(data_dir) + ":",
        }


SHARED: SharedStores | None = None
"""Set by ``tests/conftest.py`` under ``--shared-stores``."""


def open_accounts(data_dir: Path, accounts_url: str = "") -> Accounts:
    """The store a gateway with this data dir and ``accounts.url`` uses."""
    if not accounts_url and SHARED is not None:
        accounts_url = SHARED.accounts_url(data_dir)
    if accounts_url:
        from accounts.postgres_store import PostgresAccounts

        return PostgresAccounts(accounts_url, max_size=2)
    from accounts.sqlite_store import SQLiteAccounts

    data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteAccounts(data_dir / "gateway.db")


def create_key(
    data_dir: Path,
    name: str,
    *,
    scopes: tuple[str, ...] = ("infer",),
    models: tuple[str, ...] = ("*",),
    limits: Limits | None = None,
    accounts_url: str = "",
) -> str:
    with open_accounts(data_dir, accounts_url) as store:
        _, key = store.create_key(
            name, scopes=scopes, models=models, limits=limits or Limits(), now=time.time()
        )
    return key


class GatewayServer:
    def __init__(
        self,
        models_dir: Path,
        data_dir: Path,
        *,
        default_model: str,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        create_admin: bool = True,
        accounts_url: str = "",
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        shared = SHARED.env(data_dir) if SHARED is not None and not accounts_url else {}
        env = shared | (env or {})
        self.accounts_url = accounts_url or env.get("GATEWAY_ACCOUNTS_URL", "")
        self.data_dir = data_dir
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / f"gateway-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        admin = ("infer", "load", "download", "admin")
        self.admin_key = self.create_key("test-admin", scopes=admin) if create_admin else ""
        full_env = (
            {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
            | {
                "GATEWAY_MODELS_DEFAULT": default_model,
                "PYTHONUNBUFFERED": "1",
                "GATEWAY_CONSOLE_HTMX_FILE": console_htmx(),
            }
            | ({"GATEWAY_ACCOUNTS_URL": self.accounts_url} if self.accounts_url else {})
            | (env or {})
        )
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--port",
                str(self.port),
                "--models-dir",
                str(models_dir),
                "--data-dir",
                str(data_dir),
                "--log-level",
                "info",
            ],
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait("/ready" if wait_ready else "/health")
        except BaseException:
            self.stop()
            raise

    def wait(self, path: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gateway not ready after {timeout}s:\n{self.log_tail()}")

    def create_key(self, name: str, **fields: Any) -> str:
        """A new key in this server's store (the same one the server uses)."""
        return create_key(self.data_dir, name, accounts_url=self.accounts_url, **fields)

    @property
    def cli_env(self) -> dict[str, str]:
        """What ``gateway keys`` needs in its environment to open this server's store."""
        return {"GATEWAY_ACCOUNTS_URL": self.accounts_url} if self.accounts_url else {}

    def accounts(self) -> Accounts:
        """This server's key store and ledger, opened here (close it: ``with``)."""
        return open_accounts(self.data_dir, self.accounts_url)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def workers(self) -> list[int]:
        """Every worker process, spare ones included."""
        return children(self.proc.pid)

    def model(self, model_id: str) -> dict:
        """The model's entry in /admin/models (state, pid, loads, waiting, ...)."""
        response = httpx.get(
            f"{self.base_url}/admin/models/{model_id}", headers=self.headers, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def log_tail(self, lines: int = 60) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """``kill -9`` the server, as a crash would (its workers see their input end)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
