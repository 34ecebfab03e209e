"""Attacks at the edges, tried on real servers: each test asserts that the attack's
side effect did not happen (no usage charged, nothing stored, no walk per scrape,
no connection held, no download started, no 500)."""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support import server as support
from tests.support.local_hub import LocalHub
from tests.support.server import REPO, GatewayServer, free_port

SECRET = "k" * 64
HELLO = [{"role": "user", "content": "hi"}]
HUB_REPO = "mlx-community/tiny-dl"


def token(**claims) -> str:
    base = {"sub": "bad-bot", "exp": time.time() + 300, "scope": "infer", "models": ["tiny-*"]}
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


def metric(text: str, series: str) -> float | None:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def assert_openai_error(response: httpx.Response, status: int | tuple[int, ...]) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """JWTs (HS256) accepted; a 1 s header timeout; downloads off."""
    env = {
        "GATEWAY_AUTH_JWT_ALGORITHM": "HS256",
        "GATEWAY_AUTH_JWT_SECRET": SECRET,
        "GATEWAY_SERVER_HEADER_TIMEOUT": "1",
    }
    gateway = GatewayServer(
        tiny_models_dir, tmp_path_factory.mktemp("edge"), default_model="tiny-a", env=env
    )
    yield gateway
    gateway.stop()


# -- 1. JWT claims of a wrong type --------------------------------------------------------
@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"limits": {"rpm": 1.0}}, id="limit 1.0"),
        pytest.param({"limits": {"rpm": "1"}}, id="limit '1'"),
        pytest.param({"limits": {"max_concurrent": True}}, id="limit true"),
        pytest.param({"limits": {"tpm": -1}}, id="limit -1"),
        pytest.param({"limits": {"requests_per_minute": 1}}, id="unknown limit name"),
        pytest.param({"scope": 5}, id="scope a number"),
        pytest.param({"scopes": [1, 2]}, id="scopes of numbers"),
        pytest.param({"models": "tiny-*"}, id="models a string"),
        pytest.param({"name": 7}, id="name a number"),
    ],
)
def test_jwt_with_claims_of_a_wrong_type_is_refused_and_charges_nothing(server, claims):
    bad = token(**claims)
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "tiny-a", "messages": HELLO, "max_tokens": 2},
        headers={"Authorization": f"Bearer {bad}"},
        timeout=60,
    )
    error = assert_openai_error(response, 401)
    assert error["type"] == "authentication_error"
    assert error["message"] == "Invalid token claims."
    with server.accounts() as store:
        assert store.usage_summary(key_id="jwt:bad-bot") == []


def test_jwt_with_integer_limits_is_served_and_limited(server):
    good = token(sub="good-bot", limits={"rpm": 1})
    headers = {"Authorization": f"Bearer {good}"}
    body = {"model": "tiny-a", "messages": HELLO, "max_tokens": 2}
    url = server.base_url + "/v1/chat/completions"
    assert httpx.post(url, json=body, headers=headers, timeout=60).status_code == 200
    assert httpx.post(url, json=body, headers=headers, timeout=60).status_code == 429


# -- 2. Key numbers out of range ----------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "forever", "expires_in_days": 1e308}, "expires_in_days"),
        ({"name": "forever", "expires_in_days": 3651}, "expires_in_days"),
        ({"name": "huge", "limits": {"tokens_per_day": 2**63}}, "limits.tokens_per_day"),
        ({"name": "huge", "limits": {"requests_per_minute": 1.5}}, "limits.requests_per_minute"),
        ({"name": "huge", "limits": {"loads_per_hour": -1}}, "limits.loads_per_hour"),
    ],
)
def test_admin_api_refuses_out_of_range_numbers_and_stores_nothing(server, body, param):
    response = httpx.post(server.base_url + "/admin/keys", json=body, headers=server.headers)
    assert assert_openai_error(response, 400)["param"] == param
    listed = httpx.get(server.base_url + "/admin/keys", headers=server.headers).json()["data"]
    assert body["name"] not in {key["name"] for key in listed}


def test_key_update_refuses_a_limit_sqlite_cannot_hold(server):
    key_id = server.create_key("to-update").split("-")[1]
    url = f"{server.base_url}/admin/keys/{key_id}"
    response = httpx.patch(url, json={"limits": {"tpm": 2**64}}, headers=server.headers)
    assert_openai_error(response, 400)
    response = httpx.patch(
        url, json={"limits": {"tokens_per_minute": 2**63}}, headers=server.headers
    )
    assert_openai_error(response, 400)
    shown = httpx.get(url, headers=server.headers).json()
    assert shown["limits"]["tokens_per_minute"] is None


def test_usage_refuses_an_infinite_window(server):
    for days in ("1e999", "nan", "-1"):
        response = httpx.get(
            server.base_url + "/admin/usage", params={"since_days": days}, headers=server.headers
        )
        assert_openai_error(response, 400)


def test_keys_list_still_works_after_an_attempted_infinite_expiry(server):
    httpx.post(
        server.base_url + "/admin/keys",
        json={"name": "forever", "expires_in_days": 1e308},
        headers=server.headers,
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "list", "--data-dir", str(server.data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **server.cli_env},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "test-admin" in result.stdout and "forever" not in result.stdout


# -- 3a. /metrics names key ids: a credential by default -----------------------------------
def test_metrics_without_an_admin_credential_reveal_no_key_ids(server):
    member = server.create_key("member")
    member_id = member.split("-")[1]
    httpx.get(server.base_url + "/v1/models", headers={"Authorization": f"Bearer {member}"})
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer not-the-token"}, 401),
        ({"Authorization": f"Bearer {member}"}, 403),
        ({"Authorization": f"Bearer {token(scope='infer load download')}"}, 403),
    ):
        response = httpx.get(server.base_url + "/metrics", headers=headers)
        assert_openai_error(response, status)
        assert member_id not in response.text
    admin_jwt = token(sub="ops", scope="admin")
    for headers in (server.headers, {"Authorization": f"Bearer {admin_jwt}"}):
        response = httpx.get(server.base_url + "/metrics", headers=headers)
        assert response.status_code == 200 and member_id in response.text


# -- 4a. Half-sent requests are closed ----------------------------------------------------
def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing the socket, or None if still open."""
    sock.settimeout(seconds)
    received = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                return received
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        return received
    return None


def test_half_sent_request_heads_are_closed_while_others_are_served(server):
    sockets = []
    try:
        for i in range(50):
            sock = socket.create_connection(("127.0.0.1", server.port))
            if i % 5:  # most send half a head; some send nothing at all
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sockets.append(sock)
        started = time.monotonic()
        assert httpx.get(server.base_url + "/health", timeout=5).status_code == 200
        sent = [closed_within(sock, 6) for sock in sockets]
        assert all(s is not None for s in sent), f"{sent.count(None)} of 50 still open"
        assert time.monotonic() - started < 8
        partial = [s for i, s in enumerate(sent) if i % 5]
        assert all(s is not None and s.startswith(b"HTTP/1.1 408") for s in partial)
        assert all(s == b"" for i, s in enumerate(sent) if not i % 5)  # silence: a plain close
    finally:
        for sock in sockets:
            sock.close()
    assert httpx.get(server.base_url + "/health", timeout=5).status_code == 200


def test_a_trickled_body_is_cut_off_but_a_steady_one_is_served(server):
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {server.admin_key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + b'{"model": "tiny-a", ')
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 8:
            try:
                sock.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.3)
            try:
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:  # closed while our bytes were unread: a reset
                closed = True
                break
        assert closed, "a body trickled a byte at a time held its connection for 8 s"
    # A body sent at an ordinary pace is read whole, however big (up to the body limit).
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "tiny-a", "messages": HELLO, "max_tokens": 2, "user": "x" * 200_000},
        headers=server.headers,
        timeout=60,
    )
    assert response.status_code in (200, 400), response.text[:200]


def test_an_oversized_request_head_gets_a_400_in_the_openai_shape(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(40):  # up to 40 KiB of one header, in pieces: past h11's 16 KiB
            if select.select([sock], [], [], 0.01)[0]:  # answered: stop sending
                break
            sock.sendall(b"a" * 1024)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


# -- 6. Malformed and absent model names: 4xx, no side effect ------------------------------
ODD_NAMES = [
    "a/b/c",
    "org/",
    "x" * 300,
    "x" * 5000,
    "mod%C3%A8le",  # "modèle"
    "org%2Fname",  # an encoded slash: "org/name", a hub repo id
    "org%252Fname",  # double-encoded: "org%2Fname"
    "%2e%2e/x",  # "../x"
    "tiny-a%00",
    HUB_REPO,
    "ghost",
]
ROUTES = [
    ("GET", "/v1/models/{}"),
    ("GET", "/admin/models/{}"),
    ("POST", "/admin/models/{}/load"),
    ("POST", "/admin/models/{}/unload"),
    ("DELETE", "/admin/models/{}"),
]


def raw_request(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """Send ``path`` exactly as given (no client-side normalisation of ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def check_odd_names(server: GatewayServer) -> None:
    log_start = server.log_path.stat().st_size
    before = httpx.get(server.base_url + "/admin/models", headers=server.headers).json()
    for method, route in ROUTES:
        for name in [*ODD_NAMES, "../x", "./tiny-a/../x"]:
            path = route.format(name)
            status, text = raw_request(server.port, method, path, server.headers)
            assert status in (400, 404), (method, path[:80], status, text[:200])
            assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}
    after = httpx.get(server.base_url + "/admin/models", headers=server.headers).json()
    assert [m["id"] for m in after["data"]] == [m["id"] for m in before["data"]]
    server.log_tail(1)  # flushes the log
    with server.log_path.open("rb") as log:
        log.seek(log_start)
        assert b"Traceback" not in log.read()


def test_odd_model_names_get_4xx_on_every_model_route_without_downloads(server):
    check_odd_names(server)


# -- With downloads enabled: the same names, the disk gauges --------------------------------
@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("hub-repo") / "tiny-dl"
    subprocess.run(
        [sys.executable, "-m", "tests.support.tiny_model", str(target), "3"],
        check=True,
        cwd=REPO,
    )
    return target


@pytest.fixture(scope="module")
def hub(hub_repo: Path) -> Iterator[LocalHub]:
    with LocalHub() as local:
        local.add_repo(HUB_REPO, hub_repo)
        yield local


CACHE_FILES = 3000
CACHE_FILE_BYTES = 100


@pytest.fixture(scope="module")
def download_server(
    tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory, hub: LocalHub
) -> Iterator[GatewayServer]:
    data = tmp_path_factory.mktemp("edge-downloads")
    cache = data / "hf-cache"
    blobs = cache / "models--junk--many-files" / "blobs"
    blobs.mkdir(parents=True)
    for i in range(CACHE_FILES):
        (blobs / f"{i:05d}").write_bytes(b"x" * CACHE_FILE_BYTES)
    config = data / "gateway.toml"
    config.write_text(
        f'[downloads]\nenabled = true\nallow = ["*"]\ncache_dir = "{cache}"\n'
        "[server]\nheader_timeout = 5\n"
    )
    env = {"GATEWAY_CONFIG": str(config), "HF_ENDPOINT": hub.endpoint}
    gateway = GatewayServer(tiny_models_dir, data, default_model="tiny-a", env=env)
    yield gateway
    gateway.stop()


def test_odd_model_names_get_4xx_and_start_no_download(download_server, hub):
    hub.reset_counters()
    cache = download_server.data_dir / "hf-cache"
    folders = sorted(p.name for p in cache.iterdir())
    check_odd_names(download_server)
    assert hub.requests == []  # not even the hub's metadata was asked for
    assert sorted(p.name for p in cache.iterdir()) == folders


def cache_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and not p.is_symlink())


def test_scrapes_read_disk_gauges_that_a_background_task_refreshes(download_server):
    url = download_server.base_url + "/metrics"
    headers = download_server.headers
    cache = download_server.data_dir / "hf-cache"
    scans = "gateway_disk_scan_duration_seconds_count"

    def scrape() -> str:
        response = httpx.get(url, headers=headers, timeout=30)
        assert response.status_code == 200
        return response.text

    text = scrape()
    first = metric(text, scans)
    assert first is not None and first >= 1, "no background walk of the download cache"
    assert metric(text, "gateway_disk_budget_bytes") == 100 * 2**30
    # Forty concurrent scrapes: each only reads; the walks are the background task's.
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda _: scrape(), range(40)))
    elapsed = time.monotonic() - started
    counts = [metric(t, scans) for t in texts]
    assert all(c is not None for c in counts)
    walks = max(c for c in counts if c is not None) - first
    assert walks <= elapsed / 5 + 1, f"{walks} walks for 40 scrapes in {elapsed:.1f}s"
    # And the gauge follows the cache without a scrape causing the walk.
    (cache / "models--junk--many-files" / "blobs" / "late").write_bytes(b"y" * 12345)
    expected = cache_bytes(cache)
    deadline = time.monotonic() + 20
    while metric(scrape(), "gateway_disk_used_bytes") != expected:
        assert time.monotonic() < deadline, "the disk gauge was not refreshed in 20 s"
        time.sleep(0.5)


# -- 4b. A small open-files limit: shed with 503, never stop accepting ---------------------
IDLE_HOLDER = """
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    try:
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        pass  # refused or reset by the cap: still one more try at the server
print("held", flush=True)
sys.stdin.read()
"""


class LimitedServer(GatewayServer):
    """``gateway serve`` started under RLIMIT_NOFILE = (soft, hard)."""

    def __init__(self, models_dir: Path, data_dir: Path, soft: int, hard: int) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / f"gateway-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        shared = support.SHARED.env(data_dir) if support.SHARED is not None else {}
        self.accounts_url = shared.get("GATEWAY_ACCOUNTS_URL", "")
        self.admin_key = self.create_key("test-admin", scopes=("infer", "load", "admin"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | {
            "GATEWAY_MODELS_DEFAULT": "tiny-a",
            "GATEWAY_ENGINE_SPARE_WORKER": "false",
            "PYTHONUNBUFFERED": "1",
            **shared,
        }

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(self.port),
             "--models-dir", str(models_dir), "--data-dir", str(data_dir)],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limit,
        )  # fmt: skip
        try:
            self.wait("/ready")
        except BaseException:
            self.stop()
            raise

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def nofile_limits(self) -> tuple[int, int]:
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
        raise AssertionError("no open-files line in /proc/PID/limits")


def health(server: GatewayServer) -> httpx.Response:
    return httpx.get(server.base_url + "/health", timeout=10)


def test_idle_connections_never_stop_the_server_accepting(tiny_models_dir, tmp_path):
    # mlx-lm raises its workers' limit to (2048, 4096) when imported and fails under a
    # lower hard limit, so 4096 is the smallest hard limit a gateway can run under.
    # The idle sockets are held by helper processes, 2000 each: this process's own
    # hard limit may be 4096 (mlx-lm lowers it when something here imports it).
    server = LimitedServer(tiny_models_dir, tmp_path, soft=256, hard=4096)
    holders: list[subprocess.Popen[str]] = []

    def hold(count: int) -> None:
        holder = subprocess.Popen(
            [sys.executable, "-c", IDLE_HOLDER, str(server.port), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        holders.append(holder)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

    try:
        assert server.nofile_limits() == (4096, 4096)  # the soft limit was raised
        cap = 4096 - 256
        hold(400)  # beyond the soft limit it was started with
        assert health(server).status_code == 200
        hold(2000)
        hold(cap + 300 - 2400)  # and beyond the cap
        time.sleep(1.5)
        assert server.open_files() < 4096 - 64
        response = health(server)  # answered at once, never a hang
        error = assert_openai_error(response, 503)
        assert error["code"] == "server_busy" and response.headers["retry-after"] == "1"
    except BaseException:
        server.stop()
        raise
    finally:
        for holder in holders:
            holder.kill()
            holder.communicate()  # reaps it and closes its pipes
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if health(server).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not recover"
            time.sleep(0.2)
        text = httpx.get(server.base_url + "/metrics", headers=server.headers, timeout=10).text
        assert metric(text, "gateway_connections_max") == cap
        closed = metric(text, 'gateway_connections_closed_total{reason="over_capacity"}')
        assert closed is not None and closed >= 300
        assert "Too many open files" not in server.log_tail(400)
    finally:
        server.stop()
