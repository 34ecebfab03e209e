"""The deployment files in deploy/ against the real tools: promtool, Prometheus and nginx.

Each tool is installed from Debian (``apt-get install``) when missing and the
test skips, saying why, when that is impossible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server import REPO, GatewayServer, free_port

DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
HELLO = [{"role": "user", "content": "hi"}]


def ensure_tool(package: str, binaries: tuple[str, ...]) -> dict[str, str]:
    """Paths of ``binaries``, installing the Debian ``package`` first if one is missing."""

    def found() -> dict[str, str] | None:
        paths = {b: shutil.which(b) or shutil.which(b, path="/usr/sbin:/usr/bin") for b in binaries}
        return paths if all(paths.values()) else None  # type: ignore[return-value]

    if (paths := found()) is not None:
        return paths
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.skip(f"{'/'.join(binaries)} not installed and apt-get (as root) is not available")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", package]
    try:
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            subprocess.run([apt, "update"], env=env, capture_output=True, text=True, timeout=300)
            result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip(f"apt-get install {package} timed out")
    if result.returncode != 0 or (paths := found()) is None:
        pytest.skip(f"cannot install {package} with apt-get:\n{result.stderr[-2000:]}")
    return paths


@pytest.fixture(scope="session")
def prometheus_tools() -> dict[str, str]:
    return ensure_tool("prometheus", ("promtool", "prometheus"))


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    return ensure_tool("nginx", ("nginx",))["nginx"]


def promtool(
    tools: dict[str, str], *args: str, stdin: str | None = None, cwd: Path = PROMETHEUS_DIR
):
    return subprocess.run(
        [tools["promtool"], *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_promtool_check_config(prometheus_tools, tmp_path):
    # The scrape reads its bearer token from a file beside the config (mode 0600).
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    (tmp_path / "mlx-gateway-metrics-token").write_text("a-metrics-token\n")
    result = promtool(prometheus_tools, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules(prometheus_tools):
    result = promtool(prometheus_tools, "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(prometheus_tools):
    result = promtool(prometheus_tools, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def sdk(server: GatewayServer, key: str | None = None, base_url: str | None = None):
    return openai.OpenAI(
        base_url=(base_url or server.base_url) + "/v1",
        api_key=key or server.admin_key,
        max_retries=0,
        timeout=120,
    )


def test_promtool_check_metrics_on_a_real_exposition(prometheus_tools, tiny_models_dir, tmp_path):
    server = GatewayServer(tiny_models_dir, tmp_path, default_model="tiny-a")
    try:
        with sdk(server) as client:
            client.chat.completions.create(model="tiny-a", messages=HELLO, max_tokens=4)
            stream = client.chat.completions.create(
                model="tiny-a", messages=HELLO, max_tokens=4, stream=True
            )
            for _ in stream:
                pass
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="no-such-model", messages=HELLO, max_tokens=2)
        text = httpx.get(server.base_url + "/metrics", headers=server.headers, timeout=10).text
    finally:
        server.stop()
    assert "gateway_requests_total{" in text
    result = promtool(prometheus_tools, "check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{log()}")


@pytest.fixture
def run_process(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start background processes (logs in tmp_path), stopped after the test."""
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str], cwd: Path) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_real_prometheus_scrapes_denials_swaps_and_loads(
    prometheus_tools, tiny_models_dir, tmp_path, run_process
):
    data = tmp_path / "data"
    server = GatewayServer(
        tiny_models_dir,
        data,
        default_model="tiny-a",
        env={"GATEWAY_ENGINE_MAX_LOADED_MODELS": "1", "GATEWAY_ENGINE_MIN_RESIDENCY": "0"},
    )
    try:
        prom_dir = tmp_path / "prometheus"
        prom_dir.mkdir()
        shutil.copy(PROMETHEUS_DIR / "alerts.yml", prom_dir / "alerts.yml")
        config = (PROMETHEUS_DIR / "prometheus.yml").read_text()
        config = config.replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")
        config = config.replace("scrape_interval: 15s", "scrape_interval: 1s")
        config = config.replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        assert f"127.0.0.1:{server.port}" in config and "scrape_interval: 1s" in config
        (prom_dir / "prometheus.yml").write_text(config)
        (prom_dir / "mlx-gateway-metrics-token").write_text(server.admin_key)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = run_process(
            "prometheus",
            [
                prometheus_tools["prometheus"],
                f"--config.file={prom_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={prom_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            cwd=prom_dir,
        )

        def prom_log() -> str:
            return (tmp_path / "prometheus.log").read_text(errors="replace")[-4000:]

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited:\n{prom_log()}"
            try:
                return httpx.get(url + "/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "prometheus to be ready", prom_log)

        narrow = server.create_key("narrow", models=("tiny-a",))
        with sdk(server) as admin, sdk(server, narrow) as client:
            client.chat.completions.create(model="tiny-a", messages=HELLO, max_tokens=4)
            with pytest.raises(openai.PermissionDeniedError):
                client.chat.completions.create(model="tiny-b", messages=HELLO, max_tokens=2)
            admin.chat.completions.create(model="tiny-b", messages=HELLO, max_tokens=4)

        def query(expr: str) -> float | None:
            response = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=5)
            body = response.json()
            assert body["status"] == "success", body
            result = body["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        def log() -> str:
            targets = httpx.get(url + "/api/v1/targets", timeout=5).text
            return f"targets: {targets[:2000]}\n{prom_log()}\ngateway:\n{server.log_tail(20)}"

        checks = {
            "sum(gateway_requests_total)": lambda v: v >= 3,
            'gateway_policy_denials_total{reason="model_not_allowed"}': lambda v: v >= 1,
            "sum(gateway_model_swaps_total)": lambda v: v >= 1,
            'sum(gateway_model_loads_total{result="ok"})': lambda v: v >= 2,
            "gateway_models_loaded": lambda v: v == 1,
            'up{job="mlx-gateway"}': lambda v: v == 1,
        }
        for expr, ok in checks.items():

            def holds(expr=expr, ok=ok) -> bool:
                value = query(expr)
                return value is not None and ok(value)

            wait_for(holds, 60, f"{expr} (last value {query(expr)})", log)
        # The alert rules load and evaluate in the real server.
        rules = httpx.get(url + "/api/v1/rules", timeout=5).json()
        (group,) = rules["data"]["groups"]
        assert len(group["rules"]) == 6
        assert all(rule["health"] != "err" for rule in group["rules"]), group["rules"]
    finally:
        server.stop()


NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/mlx-gateway.conf;
}}
"""


def test_nginx_streams_sse_and_enforces_the_body_limit(
    nginx_binary, tiny_models_dir, tmp_path, run_process
):
    server = GatewayServer(tiny_models_dir, tmp_path / "data", default_model="tiny-a")
    try:
        conf = tmp_path / "nginx"
        conf.mkdir()
        port = free_port()
        block = (DEPLOY / "nginx" / "mlx-gateway.conf").read_text()
        block = block.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{server.port};")
        block = block.replace("listen 127.0.0.1:8081;", f"listen 127.0.0.1:{port};")
        assert str(server.port) in block and str(port) in block
        (conf / "mlx-gateway.conf").write_text(block)
        (conf / "nginx.conf").write_text(NGINX_MAIN.format(tmp=conf))
        test = subprocess.run(
            [nginx_binary, "-t", "-c", str(conf / "nginx.conf"), "-p", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert test.returncode == 0, test.stderr
        proc = run_process(
            "nginx", [nginx_binary, "-c", str(conf / "nginx.conf"), "-p", str(conf)], conf
        )
        url = f"http://127.0.0.1:{port}"

        def nginx_log() -> str:
            return (conf / "error.log").read_text(errors="replace")[-3000:]

        def up() -> bool:
            assert proc.poll() is None, f"nginx exited:\n{nginx_log()}"
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "nginx to proxy /health", nginx_log)

        with sdk(server, base_url=url) as client:
            # Warm the model up so that the stream measures generation, not loading.
            client.chat.completions.create(model="tiny-a", messages=HELLO, max_tokens=2)
            start = time.monotonic()
            arrivals = []
            stream = client.chat.completions.create(
                model="tiny-a",
                messages=HELLO,
                max_tokens=200,
                logit_bias={"2": -100},
                stream=True,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.monotonic())
            end = time.monotonic()
        assert len(arrivals) >= 50, f"only {len(arrivals)} content chunks"
        total = end - start
        first, last = arrivals[0] - start, arrivals[-1] - start
        # Chunks arrive as they are generated, not all at once when the stream ends.
        assert first < 0.5 * total, (first, last, total)
        assert last - first > 0.4 * total, (first, last, total)

        # Credentials pass through: a wrong key is refused by the gateway, not nginx.
        refused = httpx.get(url + "/v1/models", headers={"x-api-key": "gw-0000-wrong"}, timeout=10)
        assert refused.status_code == 401
        allowed = httpx.get(url + "/v1/models", headers={"x-api-key": server.admin_key}, timeout=10)
        assert allowed.status_code == 200

        # A body over client_max_body_size stops at nginx.
        body = b'{"model": "tiny-a", "messages": [], "pad": "' + b"x" * (5 << 20) + b'"}'
        response = httpx.post(
            url + "/v1/chat/completions",
            content=body,
            headers=server.headers | {"Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 413
        assert "nginx" in response.text
    finally:
        server.stop()


def test_nginx_in_front_of_two_gateways_shares_their_limits_and_clears_forward_headers(
    nginx_binary, tiny_models_dir, tmp_path, run_process, postgres_server
):
    """deploy/nginx/mlx-gateway-cluster.conf before two gateways on one PostgreSQL and
    one Redis: a key's limit counts over both, and a client's forward header never
    reaches them."""
    from policies.principal import Limits
    from tests.support.redis_server import running_redis

    accounts_url = postgres_server.create_database("nginx_cluster")
    nodes: list[GatewayServer] = []
    with running_redis() as redis:
        try:
            for i in range(2):
                port = free_port()
                nodes.append(
                    GatewayServer(
                        tiny_models_dir,
                        tmp_path / f"node{i}",
                        default_model="tiny-a",
                        accounts_url=accounts_url,
                        port=port,
                        env={
                            "GATEWAY_COUNTERS_URL": redis.url,
                            "GATEWAY_CLUSTER_SECRET": "nginx-cluster-secret-" + "z" * 20,
                            "GATEWAY_CLUSTER_NODE_URL": f"http://127.0.0.1:{port}",
                            "GATEWAY_ENGINE_SPARE_WORKER": "false",
                        },
                    )
                )
            conf = tmp_path / "nginx"
            conf.mkdir()
            port = free_port()
            block = (DEPLOY / "nginx" / "mlx-gateway-cluster.conf").read_text()
            servers = "".join(f"    server 127.0.0.1:{n.port};\n" for n in nodes)
            lines = [
                line for line in block.splitlines(keepends=True) if "server 10.0.0." not in line
            ]
            block = "".join(lines).replace("    least_conn;\n", "    least_conn;\n" + servers)
            block = block.replace("listen 8081;", f"listen 127.0.0.1:{port};")
            (conf / "mlx-gateway.conf").write_text(block)
            (conf / "nginx.conf").write_text(NGINX_MAIN.format(tmp=conf))
            test = subprocess.run(
                [nginx_binary, "-t", "-c", str(conf / "nginx.conf"), "-p", str(conf)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert test.returncode == 0, test.stderr
            proc = run_process(
                "nginx", [nginx_binary, "-c", str(conf / "nginx.conf"), "-p", str(conf)], conf
            )
            url = f"http://127.0.0.1:{port}"

            def up() -> bool:
                assert proc.poll() is None, "nginx exited"
                try:
                    return httpx.get(url + "/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(up, 30, "nginx to proxy /health", lambda: "")
            key = nodes[0].create_key("through-nginx", limits=Limits(requests_per_minute=4))
            body = {"model": "tiny-a", "messages": HELLO, "max_tokens": 1}
            # A forward header from a client is cleared by nginx: the key still counts.
            headers = {"Authorization": f"Bearer {key}", "X-Gateway-Forward": "forged.header"}
            statuses = [
                httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
                for _ in range(8)
            ]
            assert [r.status_code for r in statuses].count(200) == 4, [
                (r.status_code, r.text[:80]) for r in statuses
            ]
            assert {r.status_code for r in statuses} == {200, 429}
            with nodes[0].accounts() as store:
                rows = store.usage_summary(key_id=key.split("-")[1])
            assert sum(row["requests"] for row in rows) == 4
        finally:
            for node in nodes:
                node.stop()
            postgres_server.drop_database("nginx_cluster")
