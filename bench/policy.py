"""Policy-overhead benchmark: what API keys and policies add to a request, and LiteLLM beside it.

Run from the repository root::

    .venv/bin/python bench/policy.py [--clients 16] [--requests 400] [--rounds 3]
                                     [--skip-shared] [--skip-litellm] [--json PATH]

Every request is ``POST /v1/chat/completions``, non-streaming, a short prompt,
``max_tokens: 1``, ``temperature: 0``, sent with ``httpx.AsyncClient`` from this
process.  Two parts, one after the other, each with its servers started first
(idle when not measured) and stopped at the end whatever happens:

Gateways (``python -m gateway serve``, a tiny random llama model from
``tests.support.tiny_model`` as the only model, ``GATEWAY_MODELS_DEFAULT=tiny``,
no spare worker: the model's share of a request is small and the same in all
of them; one key's share of the model's queue, ``GATEWAY_ENGINE_QUEUE_PER_KEY``,
raised to 1000 like the limits below, so that the ``--clients`` clients of one
principal are never refused):

``gateway, auth off``
    ``GATEWAY_AUTH_ENABLED=false`` (allowed on loopback); requests carry no key.
    Policies still run and usage is still committed, for the anonymous
    principal, which has no limits.
``gateway, 10 keys``
    10 keys created in the data dir's SQLite store before start, scope
    ``infer``, limits set (so every limit is evaluated) but never reached
    (10^6 requests/min, 10^9 tokens/min, 1000 concurrent); requests round-robin
    over them.  Each request is authenticated (key looked up in SQLite, SHA-256
    compared), admitted by the policies, and its usage committed.
``gateway, 10000 keys``
    the same with 10,000 keys in the store (created one by one through
    ``SQLiteAccounts.create_key``, timed; in bulk with ``executemany`` if that would
    take over a minute); requests round-robin over 100 of them picked at random.
``gateway, 10 keys, PostgreSQL``
    ``gateway, 10 keys`` with its keys and usage ledger in PostgreSQL instead
    (``GATEWAY_ACCOUNTS_URL``): the 10 keys are created in a fresh database
    through ``PostgresAccounts.create_key``; the counters stay in memory.  Each
    request reads its key from PostgreSQL and commits its usage row there.
``gateway, 10 keys, PostgreSQL + Redis``
    the same with the per-key counters in Redis too (``GATEWAY_COUNTERS_URL``):
    each request's snapshot, admission, settlement and release are Redis round
    trips.

The two shared-store targets have servers of their own, started before the
gateways with ``tests.support.postgres.running_postgres`` and
``tests.support.redis_server.running_redis`` (as the tests do): PostgreSQL
(as the ``postgres`` user when run as root) and Redis listen on Unix sockets
only, PostgreSQL with ``fsync=off`` and Redis without persistence, so their
figures are a lower bound: no network, and commits that do not wait for a disk.
``--skip-shared`` leaves them out; without ``initdb``/``postgres`` or
``redis-server`` installed the targets needing them are skipped, saying why.

LiteLLM (``--skip-litellm`` leaves it out; a failed install skips it, saying why):

``direct (fake upstream)``
    ``bench/fake_upstream.py``: uvicorn and a minimal ASGI app answering a fixed
    ``chat.completion`` at once.
``LiteLLM proxy``
    ``litellm --config`` from its own virtualenv (``--litellm-venv``, by default
    ``~/.cache/mlx-gateway-bench/litellm-venv``: ``pip install litellm[proxy]``
    the first time, reused after), on 127.0.0.1, one uvicorn worker, only a
    master key (no database), its one model routed to the fake upstream;
    telemetry off, the bundled model-cost map (no fetch at start).

Each round (``--rounds``) measures every server of a part two ways:

1 client
    ``--latency-requests`` requests to each server, one at a time.  The servers
    take turns by blocks of 10 (each block after one unmeasured request), so
    whatever else runs on the machine falls on all of them alike.  This is the
    latency of a request on an otherwise idle server.
N clients
    ``--clients`` concurrent clients (a connection each) send ``--requests``
    requests, to one server at a time, in an order that rotates each round.
    Requests/s is the server's throughput on this machine; latency here
    includes queueing, so it grows with any per-request CPU cost times the
    queue length.
CPU/req
    user + system CPU time (from ``/proc``) of the server's process during the
    phase, per successful request: the gateway's front process (HTTP,
    authentication, policies, usage commit, worker protocol) with its model
    worker's apart, LiteLLM's proxy process alone, the fake upstream's.  It
    depends far less than latency on other load on the machine, so it is the
    steadier measure of added work (resolution: a 10 ms clock tick per phase).
store CPU/req
    for the shared-store targets, the CPU time their own PostgreSQL server
    (postmaster and backends) and Redis server used during the phase, per
    successful request.  SQLite and the in-memory counters work inside the
    gateway's front process, so their share is in its CPU/req.

How to read it: p50/p99 are over all rounds' successful requests; requests/s
and CPU/req are medians of the rounds.  ``gateway added p50`` is p50(with
keys) - p50(auth off): the cost of authentication and per-key policy, ideally
read on the 1-client line (``added CPU`` says the same in CPU time).  For the
shared-store targets, ``gateway + stores added CPU`` adds their store CPU/req
(what a request costs the machine, not only the gateway), and the ratios
``... / 10 keys (SQLite)`` divide their added figures by those of ``gateway,
10 keys`` (shown where the latter is positive).  ``LiteLLM added p50`` is
p50(LiteLLM) - p50(direct): the proxy's whole cost, since its upstream answers
at once.  Absolute gateway figures include a real (tiny) model and are not
comparable with the fake upstream's; the added figures and the front-process
CPU are.  Errors are non-200 answers (a 429 would mean the bench's limits are
wrong, a 503 a store that failed) and failed requests, counted and shown.
Every server first gets unmeasured warm-up requests (at least 20, one per
key).  Nothing is asserted: these are measurements of this machine at this moment,
and the load average printed at the end says how busy it was.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from serving import (
    REPO_ROOT,
    BenchError,
    descendants,
    free_port,
    gateway_cmd,
    log_tail,
    progress,
    running_server,
    stop_process,
)

PROMPT = "Say hi."
WARMUP = 20
BLOCK = 10  # 1-client requests in a row to one server before the next one's turn
TINY = "tiny"
UPSTREAM_MODEL = "fake-model"  # what bench/fake_upstream.py answers as
MASTER_KEY = "sk-bench"
DEFAULT_LITELLM_VENV = Path("~/.cache/mlx-gateway-bench/litellm-venv")
INSTALLED_MARK = ".bench-installed"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
BULK_AFTER_S = 60.0  # create keys one by one unless that would take longer than this

AUTH_OFF = "gateway, auth off"
KEYS_10 = "gateway, 10 keys"
KEYS_10K = "gateway, 10000 keys"
PG_10 = "gateway, 10 keys, PostgreSQL"
SHARED_10 = "gateway, 10 keys, PostgreSQL + Redis"
DIRECT = "direct (fake upstream)"
LITELLM = "LiteLLM proxy"


@dataclass
class Target:
    """A running server and how to ask it."""

    name: str
    url: str  # the chat-completions URL
    model: str
    log: Path
    pid: int  # the server process: its CPU time and its children's is the server's
    keys: list[str] = field(default_factory=list)  # bearer tokens, round-robin; [] = none
    store_pids: tuple[int, ...] = ()  # its own PostgreSQL / Redis servers (process trees)


@dataclass
class Phase:
    """The outcome of one batch of requests."""

    clients: int
    sent: int
    seconds: float
    latencies: list[float]  # of the 200 answers, seconds
    errors: Counter[str]
    examples: list[str]  # the first few error answers
    cpu_s: float  # CPU time the server process used meanwhile
    children_cpu_s: float  # and its child processes (the gateway's model worker)
    store_cpu_s: float | None  # and its own store servers' processes; None: it has none
    unmeasured: int = 0  # successful requests in the phase that were not timed

    @property
    def served(self) -> int:
        return len(self.latencies) + self.unmeasured

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms(self) -> float | None:
        """Server-process CPU milliseconds per successful request."""
        return self.cpu_s * 1000 / self.served if self.served else None

    @property
    def children_cpu_ms(self) -> float | None:
        """Child-process CPU milliseconds per successful request."""
        return self.children_cpu_s * 1000 / self.served if self.served else None

    @property
    def store_cpu_ms(self) -> float | None:
        """Store-server CPU milliseconds per successful request (``None``: no servers)."""
        if self.store_cpu_s is None or not self.served:
            return None
        return self.store_cpu_s * 1000 / self.served


@dataclass
class Figures:
    """Everything measured for one configuration, over all rounds."""

    single: list[Phase] = field(default_factory=list)
    loaded: list[Phase] = field(default_factory=list)


# --------------------------------------------------------------------------- load


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (Linux ``/proc``; else 0)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds so far of ``pid`` itself, and of its live descendants together."""
    return cpu_seconds(pid), sum(cpu_seconds(child) for child, _ in descendants(pid))


Cpu = tuple[float, float, float | None]  # front process, its children, its store servers


def target_cpu_seconds(target: Target) -> Cpu:
    """CPU seconds so far of the target's server, its children, and its store servers'
    process trees together (``None`` when it has none)."""
    stores = None
    if target.store_pids:
        stores = sum(sum(tree_cpu_seconds(pid)) for pid in target.store_pids)
    return (*tree_cpu_seconds(target.pid), stores)


def request_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 1,
        "temperature": 0,
    }


class Recorder:
    """Sends numbered requests to one target and keeps what came back."""

    def __init__(self, target: Target, client: httpx.AsyncClient) -> None:
        self.target = target
        self.client = client
        self.body = request_body(target.model)
        self.reset()

    def reset(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []
        self.sent = 0
        self.busy = 0.0  # seconds spent waiting for this target's measured answers
        self.unmeasured = 0  # successful requests sent but not timed (a block's first)

    async def send(self, i: int, measured: bool = True) -> None:
        keys = self.target.keys
        headers = {"Authorization": f"Bearer {keys[i % len(keys)]}"} if keys else {}
        self.sent += measured
        started = time.perf_counter()
        try:
            response = await self.client.post(self.target.url, json=self.body, headers=headers)
        except httpx.HTTPError as exc:
            self.busy += time.perf_counter() - started
            self.error(type(exc).__name__, repr(exc))
            return
        elapsed = time.perf_counter() - started
        ok = response.status_code == 200 and b'"choices"' in response.content
        if ok and not measured:
            self.unmeasured += 1
        elif ok:
            self.busy += elapsed
            self.latencies.append(elapsed)
        else:
            self.error(str(response.status_code), f"{response.status_code} {response.text[:300]}")

    def error(self, kind: str, example: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < 3:
            self.examples.append(example)

    def phase(self, clients: int, requests: int, seconds: float, cpu: Cpu) -> Phase:
        if self.sent < requests:
            self.errors["not sent (phase time limit)"] += requests - self.sent
        return Phase(
            clients,
            self.sent,
            seconds,
            self.latencies,
            self.errors,
            self.examples,
            *cpu,
            unmeasured=self.unmeasured,
        )


def cpu_delta(before: Cpu, after: Cpu) -> Cpu:
    # A child (a worker, a PostgreSQL backend) may have ended meanwhile: never below 0.
    stores = None if after[2] is None or before[2] is None else max(0.0, after[2] - before[2])
    return after[0] - before[0], max(0.0, after[1] - before[1]), stores


def new_client(clients: int, request_timeout: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    return httpx.AsyncClient(limits=limits, timeout=request_timeout)


async def _run_phase(
    target: Target, clients: int, requests: int, budget_s: float, request_timeout: float
) -> Phase:
    """``requests`` requests from ``clients`` concurrent clients to one target."""
    numbers = itertools.count()
    async with new_client(clients, request_timeout) as client:
        recorder = Recorder(target, client)

        async def client_loop(deadline: float) -> None:
            while time.monotonic() < deadline and (i := next(numbers)) < requests:
                await recorder.send(i)

        # Open every connection first (unmeasured), then measure.
        await asyncio.gather(*(recorder.send(i) for i in range(clients)))
        recorder.reset()
        cpu_before = target_cpu_seconds(target)
        started = time.perf_counter()
        deadline = time.monotonic() + budget_s
        await asyncio.gather(*(client_loop(deadline) for _ in range(clients)))
        seconds = time.perf_counter() - started
        cpu = cpu_delta(cpu_before, target_cpu_seconds(target))
    return recorder.phase(clients, requests, seconds, cpu)


async def _run_interleaved(
    targets: list[Target], requests: int, budget_s: float, request_timeout: float
) -> list[Phase]:
    """``requests`` requests to each target from one client, one at a time, taking turns.

    The targets take turns by blocks of ``BLOCK`` measured requests, each block
    after one unmeasured request (the server has been idle meanwhile), in an
    order that rotates, so whatever else the machine is doing falls on all
    targets alike.
    """
    async with AsyncExitStack() as stack:
        recorders = []
        for target in targets:
            client = await stack.enter_async_context(new_client(1, request_timeout))
            recorders.append(Recorder(target, client))
        for recorder in recorders:  # open the connections (unmeasured)
            await recorder.send(0)
            recorder.reset()
        cpu_before = [target_cpu_seconds(t) for t in targets]
        deadline = time.monotonic() + budget_s
        for block, first in enumerate(range(0, requests, BLOCK)):
            shift = block % len(recorders)
            for recorder in recorders[shift:] + recorders[:shift]:
                await recorder.send(first, measured=False)
                for i in range(first, min(first + BLOCK, requests)):
                    if time.monotonic() > deadline:
                        break
                    await recorder.send(i)
        cpu_after = [target_cpu_seconds(t) for t in targets]
    return [
        r.phase(1, requests, r.busy, cpu_delta(before, after))
        for r, before, after in zip(recorders, cpu_before, cpu_after, strict=True)
    ]


def report_phase(target: Target, phase: Phase, label: str) -> None:
    p50, p99 = percentile(phase.latencies, 50), percentile(phase.latencies, 99)
    bad = sum(phase.errors.values())
    stores = "" if phase.store_cpu_s is None else f" (stores {num(phase.store_cpu_ms)})"
    progress(
        f"  {label:<10} {target.name:<36} {phase.clients:>3} clients: {phase.rps:8.1f} req/s, "
        f"p50 {ms(p50)} ms, p99 {ms(p99)} ms, CPU {num(phase.cpu_ms)}"
        f"+{num(phase.children_cpu_ms)}{stores} ms/req, {bad} errors"
    )
    for example in phase.examples:
        progress(f"    error: {example}")


def run_phase(target: Target, args: argparse.Namespace, budget_s: float) -> Phase:
    phase = asyncio.run(
        _run_phase(target, args.clients, args.requests, budget_s, args.request_timeout)
    )
    report_phase(target, phase, "loaded")
    return phase


def run_interleaved(
    targets: list[Target], args: argparse.Namespace, budget_s: float
) -> list[Phase]:
    phases = asyncio.run(
        _run_interleaved(targets, args.latency_requests, budget_s, args.request_timeout)
    )
    for target, phase in zip(targets, phases, strict=True):
        report_phase(target, phase, "1 client")
    return phases


def warm_up(target: Target, args: argparse.Namespace) -> None:
    count = max(WARMUP, len(target.keys))
    phase = asyncio.run(
        _run_phase(target, min(args.clients, count), count, args.phase_timeout, 30.0)
    )
    if phase.errors:
        raise BenchError(
            f"{target.name}: warm-up failed: {dict(phase.errors)} {phase.examples}\n"
            f"--- log tail ({target.log}) ---\n{log_tail(target.log)}"
        )


def measure(
    targets: list[Target], args: argparse.Namespace, notes: list[str]
) -> dict[str, Figures]:
    """Warm every target up, then ``--rounds`` rounds: 1 client taking turns, then loaded.

    The loaded phases visit the targets one at a time, in an order that rotates.
    Once ``--part-timeout`` is spent, the rounds stop (a note says so).
    """
    deadline = time.monotonic() + args.part_timeout

    def budget() -> float:
        return min(args.phase_timeout, deadline - time.monotonic())

    for target in targets:
        progress(f"warming up {target.name} (unmeasured)")
        warm_up(target, args)
    figures = {target.name: Figures() for target in targets}
    for round_ in range(args.rounds):
        if budget() <= 0:
            notes.append(f"{', '.join(figures)}: time limit reached after {round_} rounds")
            break
        progress(f"round {round_ + 1}/{args.rounds}")
        phases = run_interleaved(targets, args, budget())
        for target, phase in zip(targets, phases, strict=True):
            figures[target.name].single.append(phase)
        shift = round_ % len(targets)
        for target in targets[shift:] + targets[:shift]:
            figures[target.name].loaded.append(run_phase(target, args, max(budget(), 1.0)))
    return figures


# --------------------------------------------------------------------------- gateways


def gateway_env(auth: bool, stores: dict[str, str]) -> dict[str, str]:
    """The gateway's environment: ``stores`` names the shared stores (``GATEWAY_*_URL``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        {
            "GATEWAY_MODELS_DEFAULT": TINY,
            "GATEWAY_AUTH_ENABLED": "true" if auth else "false",  # off: loopback only
            "GATEWAY_ENGINE_SPARE_WORKER": "false",
            "GATEWAY_ENGINE_QUEUE_PER_KEY": "1000",  # never reached, as bench_limits()
            "PYTHONUNBUFFERED": "1",
            **stores,
        }
    )
    return env


def build_tiny_model(root: Path) -> Path:
    model_dir = root / "models" / TINY
    progress(f"building the tiny random model in {model_dir}")
    subprocess.run(
        [sys.executable, "-m", "tests.support.tiny_model", str(model_dir)],
        cwd=REPO_ROOT,
        check=True,
    )
    return model_dir


def bench_limits() -> Any:
    from policies.principal import Limits

    # Set, so every limit is checked, but far above what the bench can reach.
    return Limits(requests_per_minute=10**6, tokens_per_minute=10**9, max_concurrent=1000)


def import_from_repo() -> None:
    """Make the repository's packages (``tests.support``, ``accounts``) importable."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def create_ten_keys(data_dir: Path, accounts_url: str = "") -> list[str]:
    """10 keys in the data dir's SQLite store, or in the PostgreSQL at ``accounts_url``."""
    import_from_repo()
    from tests.support.server import create_key

    limits = bench_limits()
    return [
        create_key(
            data_dir, f"bench-{i}", scopes=("infer",), limits=limits, accounts_url=accounts_url
        )
        for i in range(10)
    ]


def bulk_insert(store: Any, count: int, limits: Any, now: float) -> list[str]:
    """``count`` keys in one transaction (``executemany``), ids unique."""
    import sqlite3

    from accounts.keys import new_key

    def insert(conn: sqlite3.Connection) -> list[str]:
        taken = {row[0] for row in conn.execute("SELECT id FROM keys")}
        rows: list[tuple[Any, ...]] = []
        keys: list[str] = []
        while len(rows) < count:
            key_id, full_key, secret_hash = new_key()
            if key_id in taken:
                continue
            taken.add(key_id)
            rows.append(
                (key_id, f"bulk-{len(rows)}", secret_hash, "infer", '["*"]')
                + (limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent)
                + (None, None, None, now, None, None)
            )
            keys.append(full_key)
        conn.executemany(
            "INSERT INTO keys (id, name, secret_hash, scopes, models, rpm, tpm, max_concurrent,"
            " tokens_per_day, loads_per_hour, download_bytes_per_day, created_at, expires_at,"
            " revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return keys

    result: list[str] = store.run_write(insert)
    return result


def create_many_keys(data_dir: Path, count: int) -> tuple[list[str], dict[str, Any]]:
    """``count`` keys through ``SQLiteAccounts.create_key``, one by one (bulk if too slow)."""
    from accounts.sqlite_store import SQLiteAccounts

    data_dir.mkdir(parents=True, exist_ok=True)
    limits = bench_limits()
    keys: list[str] = []
    started = time.perf_counter()
    method = "SQLiteAccounts.create_key, one by one"
    with SQLiteAccounts(data_dir / "gateway.db") as store:
        while len(keys) < count:
            _, key = store.create_key(
                f"bench-{len(keys)}", scopes=("infer",), limits=limits, now=time.time()
            )
            keys.append(key)
            if len(keys) == min(500, count) and len(keys) < count:
                elapsed = time.perf_counter() - started
                projected = elapsed * count / len(keys)
                if projected > BULK_AFTER_S:
                    progress(f"  one by one would take ~{projected:.0f} s: inserting in bulk")
                    method = f"{len(keys)} one by one, then executemany"
                    keys += bulk_insert(store, count - len(keys), limits, time.time())
        stored = store.count_keys()
    seconds = time.perf_counter() - started
    progress(f"  created {len(keys)} keys in {seconds:.1f} s ({method}); store holds {stored}")
    return keys, {"count": len(keys), "seconds": seconds, "method": method}


def shared_stores_missing(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """Why PostgreSQL, and why Redis, cannot serve the bench here (``None``: they can)."""
    if args.skip_shared:
        return "--skip-shared", "--skip-shared"
    import_from_repo()
    try:
        from tests.support.postgres import find_bindir
        from tests.support.redis_server import find_redis_server
    except ImportError as exc:  # psycopg or pytest missing
        return (f"cannot import the test helpers ({exc})",) * 2
    postgres_missing = redis_missing = None
    if find_bindir() is None:
        postgres_missing = (
            "PostgreSQL is not installed (no initdb and postgres; Debian: apt-get install "
            "postgresql)"
        )
    elif os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            postgres_missing = "PostgreSQL refuses to run as root, and there is no postgres user"
    if find_redis_server() is None:
        redis_missing = (
            "Redis is not installed (no redis-server; Debian: apt-get install redis-server)"
        )
    return postgres_missing, redis_missing


@dataclass
class Plan:
    """A gateway to start."""

    name: str
    keys: list[str]
    data_dir: Path
    auth: bool = True
    stores: dict[str, str] = field(default_factory=dict)  # GATEWAY_ACCOUNTS_URL, ..._COUNTERS_URL
    store_pids: tuple[int, ...] = ()


def start_shared_stores(
    stack: ExitStack, with_redis: bool, info: dict[str, Any]
) -> tuple[dict[str, str], tuple[int, ...]]:
    """A fresh PostgreSQL database (and Redis) on servers of their own, stopped with
    ``stack``: the gateway's settings naming them, and the servers' PIDs."""
    import psycopg
    import redis

    from tests.support.postgres import running_postgres
    from tests.support.redis_server import running_redis

    postgres = stack.enter_context(running_postgres())
    url = postgres.create_database("bench")
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        info["stores"]["postgresql"] = row[0] if row else "?"
    # The postmaster's PID heads its socket's lock file; the backends are its children.
    lock = postgres.socket_dir / f".s.PGSQL.{postgres.port}.lock"
    stores = {"GATEWAY_ACCOUNTS_URL": url}
    pids = [int(lock.read_text().split()[0])]
    if with_redis:
        server = stack.enter_context(running_redis())
        client = redis.Redis.from_url(server.url)
        try:
            about = client.info("server")
        finally:
            client.close()
        info["stores"]["redis"] = str(about["redis_version"])
        stores["GATEWAY_COUNTERS_URL"] = server.url
        pids.append(int(about["process_id"]))
    return stores, tuple(pids)


def shared_plans(
    stack: ExitStack, root: Path, args: argparse.Namespace, info: dict[str, Any]
) -> list[Plan]:
    """The shared-store gateways, their servers started on ``stack`` (each its own); the
    ones that cannot run are noted and left out."""
    postgres_missing, redis_missing = shared_stores_missing(args)
    plans = []
    for name, with_redis in ((PG_10, False), (SHARED_10, True)):
        missing = postgres_missing or (redis_missing if with_redis else None)
        if missing is None:
            progress(f"starting PostgreSQL{' and Redis' if with_redis else ''} for {name}")
            try:
                stores, pids = start_shared_stores(stack, with_redis, info)
            except Exception as exc:  # a server that did not start: skip, saying why
                missing = f"its stores did not start: {type(exc).__name__}: {exc}"
        if missing is not None:
            progress(f"{name} skipped: {missing}")
            info["notes"].append(f"{name} skipped: {missing}")
            continue
        data_dir = root / f"data-{'pg-redis' if with_redis else 'pg'}"
        progress(f"creating 10 keys in PostgreSQL for {name}")
        keys = create_ten_keys(data_dir, stores["GATEWAY_ACCOUNTS_URL"])
        plans.append(Plan(name, keys, data_dir, stores=stores, store_pids=pids))
    return plans


@contextmanager
def gateways(root: Path, args: argparse.Namespace, info: dict[str, Any]) -> Iterator[list[Target]]:
    """The gateway configurations, started one after the other, stopped at exit (then
    the shared stores' servers)."""
    model_dir = build_tiny_model(root)
    rng = random.Random(args.seed)
    with ExitStack() as stack:
        plans = [Plan(AUTH_OFF, [], root / "data-off", auth=False)]
        progress("creating 10 keys")
        plans.append(Plan(KEYS_10, create_ten_keys(root / "data-10"), root / "data-10"))
        progress(f"creating {args.many_keys} keys")
        many, info["creation"] = create_many_keys(root / "data-many", args.many_keys)
        plans.append(Plan(KEYS_10K, rng.sample(many, min(100, len(many))), root / "data-many"))
        plans += shared_plans(stack, root, args, info)
        targets = []
        for plan in plans:
            port = free_port()
            log = root / f"{plan.name.replace(', ', '-').replace(' ', '_')}.log"
            progress(f"starting {plan.name} on 127.0.0.1:{port}")
            proc = stack.enter_context(
                running_server(
                    plan.name,
                    gateway_cmd(model_dir, port, plan.data_dir),
                    gateway_env(plan.auth, plan.stores),
                    f"http://127.0.0.1:{port}/ready",
                    log,
                    args.start_timeout,
                )
            )
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            targets.append(Target(plan.name, url, TINY, log, proc.pid, plan.keys, plan.store_pids))
        yield targets
        progress("stopping the gateways (and the shared stores' servers)")


# --------------------------------------------------------------------------- LiteLLM


def litellm_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def install_litellm(venv: Path, timeout: float) -> tuple[Path | None, str]:
    """The virtualenv with ``litellm[proxy]`` (reused, or installed now), or ``None`` and why."""
    if (venv / INSTALLED_MARK).is_file() and (venv / "bin" / "litellm").is_file():
        version = litellm_version(venv)
        if version:
            progress(f"reusing LiteLLM {version} in {venv}")
            return venv, version
    if venv.exists():
        progress(f"removing the incomplete virtualenv {venv}")
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    progress(f"installing litellm[proxy] into {venv} (takes a few minutes)")
    started = time.monotonic()
    log = venv.parent / "litellm-install.log"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off"]
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*cmd, "litellm[proxy]"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)

            watchdog = threading.Timer(timeout, expire)
            watchdog.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    if line.startswith(("Collecting", "Installing", "Successfully", "ERROR")):
                        progress(f"  [{time.monotonic() - started:4.0f} s] {line.rstrip()[:110]}")
                proc.wait()
            finally:
                watchdog.cancel()
                stop_process(proc, grace=5)  # type: ignore[arg-type]
        if expired.is_set():
            raise BenchError(f"pip took more than {timeout:.0f} s:\n{log_tail(log, 15)}")
        if proc.returncode != 0:
            raise BenchError(f"pip exited with {proc.returncode}:\n{log_tail(log, 15)}")
        version = litellm_version(venv)
        if not version or not (venv / "bin" / "litellm").is_file():
            raise BenchError("pip succeeded but litellm is not importable")
    except (OSError, subprocess.SubprocessError, BenchError) as exc:
        shutil.rmtree(venv, ignore_errors=True)
        return None, f"{type(exc).__name__}: {exc} (log: {log})"
    (venv / INSTALLED_MARK).write_text(f"{version}\n")
    progress(f"installed LiteLLM {version} in {time.monotonic() - started:.0f} s")
    return venv, version


LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: sk-fake-upstream
litellm_settings:
  telemetry: false
"""


def litellm_env() -> dict[str, str]:
    drop = ("LITELLM_", "DATABASE_URL", "OPENAI_", "REDIS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        {
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "LITELLM_TELEMETRY_DISABLED": "true",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from GitHub at start
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@contextmanager
def litellm_targets(root: Path, venv: Path, args: argparse.Namespace) -> Iterator[list[Target]]:
    with ExitStack() as stack:
        upstream = free_port()
        log = root / "fake_upstream.log"
        progress(f"starting the fake upstream on 127.0.0.1:{upstream}")
        cmd = [sys.executable, str(Path(__file__).with_name("fake_upstream.py"))]
        upstream_proc = stack.enter_context(
            running_server(
                "fake upstream",
                [*cmd, "--port", str(upstream)],
                dict(os.environ),
                f"http://127.0.0.1:{upstream}/health",
                log,
                args.start_timeout,
                root,
            )
        )
        url = f"http://127.0.0.1:{upstream}/v1/chat/completions"
        direct = Target(DIRECT, url, UPSTREAM_MODEL, log, upstream_proc.pid)

        port = free_port()
        config = root / "litellm.yaml"
        config.write_text(LITELLM_CONFIG.format(model=UPSTREAM_MODEL, upstream=upstream))
        log = root / "litellm.log"
        progress(f"starting LiteLLM on 127.0.0.1:{port} (routing to the fake upstream)")
        cmd = [str(venv / "bin" / "litellm"), "--config", str(config)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        proxy_proc = stack.enter_context(
            running_server(
                "LiteLLM",
                cmd,
                litellm_env(),
                f"http://127.0.0.1:{port}/health/liveliness",
                log,
                args.start_timeout,
                root,
            )
        )
        proxy = Target(
            LITELLM,
            f"http://127.0.0.1:{port}/v1/chat/completions",
            UPSTREAM_MODEL,
            log,
            proxy_proc.pid,
            [MASTER_KEY],
        )
        yield [direct, proxy]
        progress("stopping LiteLLM and the fake upstream")


# --------------------------------------------------------------------------- summary


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile, or ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(max(1, math.ceil(pct / 100 * len(ordered))), len(ordered))
    return ordered[rank - 1]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def summarize_phases(phases: list[Phase]) -> dict[str, Any]:
    latencies = [x for p in phases for x in p.latencies]
    errors: Counter[str] = Counter()
    for p in phases:
        errors.update(p.errors)
    return {
        "clients": phases[0].clients if phases else None,
        "requests": sum(p.sent for p in phases),
        "ok": len(latencies),
        "rps": statistics.median(p.rps for p in phases) if phases else None,
        "rps_rounds": [p.rps for p in phases],
        "p50_ms": _ms(percentile(latencies, 50)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "p50_ms_rounds": [_ms(percentile(p.latencies, 50)) for p in phases],
        "cpu_ms_per_request": median_of([p.cpu_ms for p in phases]),
        "cpu_ms_per_request_rounds": [p.cpu_ms for p in phases],
        "children_cpu_ms_per_request": median_of([p.children_cpu_ms for p in phases]),
        "store_cpu_ms_per_request": median_of([p.store_cpu_ms for p in phases]),
        "errors": dict(errors),
        "error_examples": [e for p in phases for e in p.examples][:5],
    }


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def added_ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` of two added figures, where ``b`` is one (positive): else ``None``."""
    return None if a is None or b is None or b <= 0 else a / b


def total(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def summarize(figures: dict[str, Figures]) -> dict[str, Any]:
    rows = {
        name: {"1 client": summarize_phases(f.single), "loaded": summarize_phases(f.loaded)}
        for name, f in figures.items()
    }

    def fig(name: str, kind: str, what: str) -> float | None:
        return rows[name][kind][what] if name in rows else None

    def added(name: str, kind: str, what: str) -> float | None:
        return diff(fig(name, kind, what), fig(AUTH_OFF, kind, what))

    def added_with_stores(name: str, kind: str) -> float | None:
        stores = fig(name, kind, "store_cpu_ms_per_request")
        return total(added(name, kind, "cpu_ms_per_request"), stores)

    comparisons: dict[str, float | None] = {}
    for name in (KEYS_10, KEYS_10K, PG_10, SHARED_10):
        if name not in rows:
            continue
        label = name.removeprefix("gateway, ")
        for kind in ("1 client", "loaded"):
            comparisons[f"gateway added p50 ms, {label} vs auth off, {kind}"] = added(
                name, kind, "p50_ms"
            )
        for kind in ("1 client", "loaded"):
            comparisons[f"gateway added CPU ms/req, {label} vs auth off, {kind}"] = added(
                name, kind, "cpu_ms_per_request"
            )
        if name in (PG_10, SHARED_10):
            for kind in ("1 client", "loaded"):
                comparisons[f"store servers' CPU ms/req, {label}, {kind}"] = fig(
                    name, kind, "store_cpu_ms_per_request"
                )
            for kind in ("1 client", "loaded"):
                comparisons[f"gateway + stores added CPU ms/req, {label} vs auth off, {kind}"] = (
                    added_with_stores(name, kind)
                )
            for kind in ("1 client", "loaded"):
                vs_sqlite = f"{label} / 10 keys (SQLite)"
                comparisons[f"{vs_sqlite}: added p50 ratio, {kind}"] = added_ratio(
                    added(name, kind, "p50_ms"), added(KEYS_10, kind, "p50_ms")
                )
                comparisons[f"{vs_sqlite}: added CPU ratio, {kind}"] = added_ratio(
                    added(name, kind, "cpu_ms_per_request"),
                    added(KEYS_10, kind, "cpu_ms_per_request"),
                )
                comparisons[f"{vs_sqlite}: added CPU ratio with stores, {kind}"] = added_ratio(
                    added_with_stores(name, kind), added(KEYS_10, kind, "cpu_ms_per_request")
                )
        comparisons[f"gateway req/s ratio, {label} / auth off"] = ratio(
            fig(name, "loaded", "rps"), fig(AUTH_OFF, "loaded", "rps")
        )
    if LITELLM in rows:
        for kind in ("1 client", "loaded"):
            comparisons[f"LiteLLM added p50 ms vs direct, {kind}"] = diff(
                fig(LITELLM, kind, "p50_ms"), fig(DIRECT, kind, "p50_ms")
            )
        comparisons["LiteLLM CPU ms/req (proxy process), loaded"] = fig(
            LITELLM, "loaded", "cpu_ms_per_request"
        )
        comparisons["LiteLLM req/s"] = fig(LITELLM, "loaded", "rps")
        comparisons["LiteLLM req/s ratio, LiteLLM / direct"] = ratio(
            fig(LITELLM, "loaded", "rps"), fig(DIRECT, "loaded", "rps")
        )
        if KEYS_10K in rows:
            comparisons["CPU/req ratio, LiteLLM process / gateway process (10000 keys)"] = ratio(
                fig(LITELLM, "loaded", "cpu_ms_per_request"),
                fig(KEYS_10K, "loaded", "cpu_ms_per_request"),
            )
    return {"configurations": rows, "comparisons": comparisons}


def num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


COLUMNS = (  # (title, unit, width)
    ("configuration", "", 38),
    ("1 client p50", "ms", 13),
    ("p99", "ms", 8),
    ("CPU/req", "ms", 9),
    ("| req/s", "", 10),
    ("p50", "ms", 9),
    ("p99", "ms", 9),
    ("CPU/req", "ms", 9),
    ("worker CPU", "ms/req", 12),
    ("store CPU", "ms/req", 11),
    ("errors", "", 8),
)


def print_report(summary: dict[str, Any], args: argparse.Namespace, notes: list[str]) -> None:
    rows = summary["configurations"]
    print()
    print(
        f"POST /v1/chat/completions, max_tokens 1: {args.rounds} rounds of "
        f"{args.latency_requests} requests from 1 client, then {args.requests} from "
        f"{args.clients} concurrent clients (right of |)"
    )
    print(
        "p50/p99 over all rounds; req/s and CPU/req medians of the rounds; CPU/req is the "
        "server process's\n(the gateway's front process, LiteLLM's proxy, the fake upstream), "
        "worker CPU the gateway's model worker's,\nstore CPU its own PostgreSQL and Redis "
        "servers' (the loaded phase)"
    )
    widths = [w for _, _, w in COLUMNS]
    print("".join(f"{t:<{w}}" if i == 0 else f"{t:>{w}}" for i, (t, _, w) in enumerate(COLUMNS)))
    print("".join(f"{u:>{w}}" for _, u, w in COLUMNS))
    print("-" * sum(widths))
    for name, row in rows.items():
        one, loaded = row["1 client"], row["loaded"]
        errors = sum(one["errors"].values()) + sum(loaded["errors"].values())
        worker = loaded["children_cpu_ms_per_request"] if name.startswith("gateway") else None
        cells = [
            name,
            num(one["p50_ms"]),
            num(one["p99_ms"]),
            num(one["cpu_ms_per_request"]),
            num(loaded["rps"], 1),
            num(loaded["p50_ms"]),
            num(loaded["p99_ms"]),
            num(loaded["cpu_ms_per_request"]),
            num(worker),
            num(loaded["store_cpu_ms_per_request"]),
            str(errors),
        ]
        print(
            "".join(
                f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    print()
    for name, value in summary["comparisons"].items():
        signed = " added " in name and "ratio" not in name
        digits = 1 if name == "LiteLLM req/s" else 2
        print(f"  {name:<86}{num(value, digits, signed):>9}")
    for name, row in rows.items():
        for kind in ("1 client", "loaded"):
            if row[kind]["errors"]:
                print(f"\n{name}, {kind}: errors {row[kind]['errors']}")
                for example in row[kind]["error_examples"]:
                    print(f"    {example}")
    for note in notes:
        print(f"\nnote: {note}")


def versions(litellm: str | None, stores: dict[str, str]) -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("mlx-gateway", "litestar", "uvicorn", "httpx", "mlx", "psycopg", "redis"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["litellm"] = litellm or "not measured"
    found["postgresql server"] = stores.get("postgresql", "not measured")
    found["redis server"] = stores.get("redis", "not measured")
    return found


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument(
        "--requests", type=int, default=400, help="requests per round with --clients clients"
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        default=200,
        help="1-client requests to each server per round",
    )
    parser.add_argument("--rounds", type=int, default=3, help="measuring rounds")
    parser.add_argument("--many-keys", type=int, default=10_000, help="keys in the big store")
    parser.add_argument(
        "--skip-shared",
        action="store_true",
        help="leave out the gateways on PostgreSQL (and Redis)",
    )
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--skip-gateway", action="store_true", help="measure LiteLLM only")
    parser.add_argument(
        "--litellm-venv",
        type=Path,
        default=DEFAULT_LITELLM_VENV,
        help="virtualenv for litellm[proxy] (installed there unless present)",
    )
    parser.add_argument(
        "--install-timeout", type=float, default=480.0, help="seconds the pip install may take"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--seed", type=int, default=0, help="which 100 keys of the big store")
    parser.add_argument(
        "--start-timeout", type=float, default=120.0, help="seconds a server may take to be ready"
    )
    parser.add_argument(
        "--phase-timeout", type=float, default=120.0, help="seconds one batch of requests may take"
    )
    parser.add_argument(
        "--part-timeout",
        type=float,
        default=300.0,
        help="seconds of measuring per part (gateways; LiteLLM); later rounds are dropped",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds one request may take"
    )
    args = parser.parse_args(argv)
    if min(args.clients, args.requests, args.latency_requests, args.rounds) < 1:
        parser.error("--clients, --requests, --latency-requests and --rounds must be positive")
    if args.many_keys < 100:
        parser.error("--many-keys must be at least 100")
    return args


def bench(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measure the gateways, then LiteLLM; every server is stopped whatever happens."""
    figures: dict[str, Figures] = {}
    info: dict[str, Any] = {"notes": [], "litellm": None, "stores": {}, "load": [load_average()]}
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp:
        root = Path(tmp)
        if args.skip_gateway:
            info["notes"].append("gateway skipped (--skip-gateway)")
        else:
            with gateways(root, args, info) as targets:
                figures.update(measure(targets, args, info["notes"]))
        if args.skip_litellm:
            info["notes"].append("LiteLLM skipped (--skip-litellm)")
        else:
            venv, detail = install_litellm(
                args.litellm_venv.expanduser().resolve(), args.install_timeout
            )
            if venv is None:
                progress(f"LiteLLM skipped: the install failed: {detail}")
                info["notes"].append(f"LiteLLM skipped: the install failed: {detail}")
            else:
                info["litellm"] = detail
                with litellm_targets(root, venv, args) as targets:
                    figures.update(measure(targets, args, info["notes"]))
    info["load"].append(load_average())
    start, end = info["load"]
    info["notes"].append(
        f"load average {start:.2f} at the start, {end:.2f} at the end, on {os.cpu_count()} "
        "CPUs (other work on the machine shows up in every figure)"
    )
    return summarize(figures), info


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: servers get stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.time()
    try:
        summary, info = bench(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped", file=sys.stderr)
        return 130
    print_report(summary, args, info["notes"])
    if "creation" in info:
        c = info["creation"]
        print(f"\n{c['count']} keys created in {c['seconds']:.1f} s ({c['method']})")
    print(f"\n(wall time {time.time() - started:.0f} s)")
    if args.json:
        document = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "versions": versions(info["litellm"], info["stores"]),
            "key_creation": info.get("creation"),
            "notes": info["notes"],
            **summary,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
