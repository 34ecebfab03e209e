"""Several gateways as one endpoint: three real gateway processes sharing one real
PostgreSQL (keys, usage) and one real Redis (counters, the nodes' heartbeats).

Each limit is tried the way a key holder would get around it with several nodes:
requests spread over the nodes at once, a revocation on one node and the key used
on another, a node killed while it holds a slot, Redis gone mid-service, a
forwarded request forged or replayed.  Every test asserts what did not happen too.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.cluster import sign
from policies.principal import Limits, Principal
from tests.support.redis_server import RedisServer, running_redis
from tests.support.server import GatewayServer, free_port

SECRET = "cluster-test-secret-" + "x" * 24
HELLO = [{"role": "user", "content": "hello"}]
NO_EOS = {"2": -100}
LEASE_TTL = 2.0
BEAT = 0.3


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def accounts_url(postgres_server) -> Iterator[str]:
    name = "cluster_e2e"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)


def start_node(models_dir, data_dir, accounts_url: str, redis_url: str, **env: str):
    port = free_port()
    return GatewayServer(
        models_dir,
        data_dir,
        default_model="tiny-a",
        accounts_url=accounts_url,
        port=port,
        env={
            "GATEWAY_COUNTERS_URL": redis_url,
            "GATEWAY_COUNTERS_LEASE_TTL": str(LEASE_TTL),
            "GATEWAY_CLUSTER_SECRET": SECRET,
            "GATEWAY_CLUSTER_NODE_URL": f"http://127.0.0.1:{port}",
            "GATEWAY_CLUSTER_HEARTBEAT": str(BEAT),
            "GATEWAY_ENGINE_MIN_RESIDENCY": "0",
            "GATEWAY_ENGINE_SPARE_WORKER": "false",
            **env,
        },
    )


@pytest.fixture(scope="module")
def nodes(tiny_models_dir, tmp_path_factory, accounts_url, redis) -> Iterator[list[GatewayServer]]:
    started: list[GatewayServer] = []
    try:
        for i in range(3):
            data = tmp_path_factory.mktemp(f"node{i}")
            started.append(start_node(tiny_models_dir, data, accounts_url, redis.url))
        yield started
    finally:
        for node in started:
            node.stop()


def post(node: GatewayServer, key: str, body: dict, path: str = "/v1/chat/completions"):
    return httpx.post(
        node.base_url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def chat(node: GatewayServer, key: str, model: str = "tiny-a", **extra) -> httpx.Response:
    body = {"model": model, "messages": HELLO, "max_tokens": 1, "temperature": 0, **extra}
    return post(node, key, body)


def key_id(key: str) -> str:
    return key.split("-")[1]


def usage(node: GatewayServer, key: str) -> list[dict]:
    with node.accounts() as store:
        return store.usage_summary(key_id=key_id(key))


def tokens_used(node: GatewayServer, key: str) -> int:
    with node.accounts() as store:
        return store.tokens_since(key_id(key), 0)


def requests_recorded(node: GatewayServer, key: str) -> int:
    return sum(row["requests"] for row in usage(node, key))


class LongStream:
    """A streaming request that generates until closed (end of text suppressed)."""

    def __init__(self, node: GatewayServer, key: str, model: str = "tiny-a") -> None:
        self.client = httpx.Client(timeout=60)
        body = {
            "model": model,
            "messages": HELLO,
            "max_tokens": 900,
            "logit_bias": NO_EOS,
            "stream": True,
        }
        self.response = self.client.send(
            self.client.build_request(
                "POST",
                node.base_url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            ),
            stream=True,
        )
        self.lines = self.response.iter_lines()

    @property
    def status(self) -> int:
        return self.response.status_code

    def first_chunk(self) -> str:
        for line in self.lines:
            if line.startswith("data: "):
                return line
        raise AssertionError("the stream ended before its first chunk")

    def close(self) -> None:
        self.response.close()
        self.client.close()


def eventually(check, timeout: float = 10.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(step)


def test_a_key_limited_to_10_per_minute_gets_exactly_10_of_30_spread_over_the_nodes(nodes):
    key = nodes[0].create_key("ten-a-minute", limits=Limits(requests_per_minute=10))

    def one(i: int) -> int:
        return chat(nodes[i % 3], key).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(one, range(30)))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20, statuses
    assert requests_recorded(nodes[0], key) == 10  # refused ones leave no usage row
    # Every node now refuses the key, with the real wait.
    for node in nodes:
        refused = chat(node, key)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1


def test_max_concurrent_2_holds_across_nodes_and_slots_come_back(nodes):
    key = nodes[0].create_key("two-at-once", limits=Limits(max_concurrent=2))

    def open_stream(i: int) -> LongStream:
        return LongStream(nodes[i % 3], key)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        streams = list(pool.map(open_stream, range(6)))
    try:
        running = [s for s in streams if s.status == 200]
        assert len(running) == 2, [s.status for s in streams]
        assert all(s.status == 429 for s in streams if s not in running)
        for stream in running:
            assert stream.first_chunk()
        for node in nodes:  # no node has a third slot to give
            assert chat(node, key).status_code == 429
    finally:
        for stream in streams:
            stream.close()
    # The slots are back once the streams are gone, on every node.
    eventually(lambda: chat(nodes[2], key).status_code == 200)


def test_tokens_per_day_hold_across_nodes_raced(nodes):
    limit = 120
    key = nodes[0].create_key("daily", limits=Limits(tokens_per_day=limit))

    def one(i: int) -> int:
        return chat(nodes[i % 3], key, max_tokens=16, logit_bias=NO_EOS).status_code

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        statuses = list(pool.map(one, range(18)))
    assert 200 in statuses and 403 in statuses, statuses
    assert tokens_used(nodes[0], key) <= limit
    refused = chat(nodes[1], key)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "quota_exhausted"


def test_a_key_revoked_through_one_node_is_refused_by_the_others_within_a_second(nodes):
    key = nodes[0].create_key("revoked-soon")
    assert all(chat(node, key).status_code == 200 for node in nodes)
    revoked = httpx.post(
        f"{nodes[0].base_url}/admin/keys/{key_id(key)}/revoke", headers=nodes[0].headers
    )
    assert revoked.status_code == 200
    started = time.monotonic()
    for node in nodes[1:]:
        assert chat(node, key).status_code == 401
    assert time.monotonic() - started < 1.0


def test_a_limit_lowered_through_one_node_binds_on_the_others_at_once(nodes):
    key = nodes[0].create_key("lowered")
    assert chat(nodes[1], key).status_code == 200
    changed = httpx.patch(
        f"{nodes[0].base_url}/admin/keys/{key_id(key)}",
        json={"limits": {"requests_per_minute": 1}},
        headers=nodes[0].headers,
    )
    assert changed.status_code == 200, changed.text
    assert chat(nodes[2], key).status_code == 429  # the one request of the minute is used


def test_a_node_killed_while_holding_a_slot_frees_it_after_the_lease(
    tiny_models_dir, tmp_path_factory, accounts_url, redis, nodes
):
    doomed = start_node(tiny_models_dir, tmp_path_factory.mktemp("doomed"), accounts_url, redis.url)
    key = nodes[0].create_key("one-slot", limits=Limits(max_concurrent=1))
    stream = LongStream(doomed, key)
    try:
        assert stream.status == 200 and stream.first_chunk()
        assert chat(nodes[0], key).status_code == 429
        doomed.kill()
        killed = time.monotonic()
        assert chat(nodes[1], key).status_code == 429  # the lease outlives the node a while
        eventually(lambda: chat(nodes[1], key).status_code == 200, timeout=LEASE_TTL * 5)
        assert time.monotonic() - killed < LEASE_TTL * 5
    finally:
        stream.close()
        doomed.stop()


def test_a_model_loaded_only_on_b_is_served_by_b_through_a_with_one_load(nodes, redis):
    a, b = nodes[0], nodes[1]
    loader = a.create_key("loader", scopes=("infer", "load"))
    assert chat(b, loader, model="tiny-b").status_code == 200  # b loads it
    eventually(lambda: "tiny-b" in peer_models(redis.url, b))
    time.sleep(BEAT * 2)  # a has read the nodes' reports since
    # A key without `load`: on a alone it could never cause tiny-b to load.
    key = a.create_key("reader", scopes=("infer",), limits=Limits(max_concurrent=1))
    before = requests_recorded(a, key)
    served = chat(a, key, model="tiny-b", max_tokens=4)
    assert served.status_code == 200, served.text
    assert served.json()["model"] == "tiny-b"
    assert a.model("tiny-b")["state"] == "absent" and a.model("tiny-b")["loads"] == 0
    assert b.model("tiny-b")["loads"] == 1
    assert nodes[2].model("tiny-b")["loads"] == 0
    assert requests_recorded(a, key) == before + 1  # usage recorded once, by b
    # Streaming passes through unchanged, and the entry's slot comes back each time.
    for _ in range(2):
        with httpx.stream(
            "POST",
            a.base_url + "/v1/chat/completions",
            json={"model": "tiny-b", "messages": HELLO, "max_tokens": 3, "stream": True},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[1][6:])["model"] == "tiny-b"
    assert a.model("tiny-b")["loads"] == 0
    # keep_alive travels in the body: the serving gateway holds it to its ceiling too,
    # and a key without `load` may not change it at all.
    ollama = {"model": "tiny-b", "messages": HELLO, "stream": False, "options": {"num_predict": 1}}
    longer = post(a, loader, ollama | {"keep_alive": "10h"}, path="/api/chat")
    assert longer.status_code == 200, longer.text
    assert 0 < stays_loaded_for(b, "tiny-b") <= 3601  # "10h", lowered to the ceiling
    forever = post(a, key, ollama | {"keep_alive": -1}, path="/api/chat")
    assert forever.status_code == 403
    assert 0 < stays_loaded_for(b, "tiny-b") <= 3601
    # A key not allowed tiny-b gets nothing through a forward either.
    other = a.create_key("only-a", models=("tiny-a",))
    refused = chat(a, other, model="tiny-b")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert requests_recorded(a, other) == 0


def stays_loaded_for(node: GatewayServer, model: str) -> float:
    """Seconds until ``node`` unloads ``model`` once idle (Ollama's ``/api/ps``, exact
    for an admin key)."""
    import datetime as dt

    listing = httpx.get(node.base_url + "/api/ps", headers=node.headers, timeout=10).json()
    (entry,) = [m for m in listing["models"] if m["name"].split(":")[0] == model]
    expires = dt.datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
    return (expires - dt.datetime.now(dt.UTC)).total_seconds()


def peer_models(redis_url: str, peer: GatewayServer, prefix: str = "gw:") -> set[str]:
    """The models ``peer`` reports ready, read from Redis as the nodes read it."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_url)
    try:
        for name in client.scan_iter(match=prefix + "node:*"):
            info = json.loads(client.get(name) or b"{}")
            if info.get("url") == peer.base_url:
                return set(info["models"])
    finally:
        client.close()
    return set()


def test_a_forged_or_replayed_forward_header_is_refused_and_serves_nothing(nodes):
    b = nodes[1]
    key = b.create_key("victim", scopes=("infer", "admin"))
    principal = Principal(key_id(key), "victim", frozenset({"infer", "admin"}), ("*",), Limits())
    path = "/v1/chat/completions"
    body = json.dumps({"model": "tiny-a", "messages": HELLO, "max_tokens": 1}).encode()

    def send(header: str, content: bytes = body, to: str = path) -> httpx.Response:
        return httpx.post(
            b.base_url + to,
            content=content,
            headers={"x-gateway-forward": header, "content-type": "application/json"},
        )

    def signed(at: float | None = None, **kw) -> str:
        fields = {"path": path, "body": body} | kw
        return sign(SECRET, principal, "", 1, time.time() if at is None else at, **fields)

    before = requests_recorded(b, key)
    forged = sign("not-the-cluster-secret-" + "y" * 20, principal, "", 1, time.time(), path=path)
    for header in (forged, "garbage", forged.split(".")[0] + ".", ""):
        assert send(header).status_code == 401, header
    # Signed for another route or another body: refused.
    assert send(signed(path="/v1/completions")).status_code == 401
    other_body = json.dumps({"model": "tiny-a", "messages": HELLO, "max_tokens": 50}).encode()
    assert send(signed(), content=other_body).status_code == 401
    # The admin scope never travels in a forward.
    admin = send(signed(path="/admin/keys"), content=b"", to="/admin/keys")
    assert admin.status_code in (401, 403, 405)
    assert (
        httpx.get(
            b.base_url + "/admin/keys", headers={"x-gateway-forward": signed(path="/admin/keys")}
        ).status_code
        == 403
    )
    # A genuine header works once; captured and sent again, it is refused.
    genuine = signed()
    assert send(genuine).status_code == 200
    assert send(genuine).status_code == 401
    assert send(signed(at=time.time() - 3600)).status_code == 401
    assert requests_recorded(b, key) == before + 1


def not_ready(node: GatewayServer) -> dict | None:
    response = httpx.get(node.base_url + "/ready")
    return response.json() if response.status_code == 503 else None


def test_redis_stopped_fails_closed_with_503_then_service_resumes_by_itself(nodes, redis):
    key = nodes[0].create_key("through-an-outage")
    assert chat(nodes[0], key).status_code == 200
    redis.stop()
    try:
        refused = chat(nodes[0], key)
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "accounts_unavailable"
        assert "unix://" not in refused.text and refused.headers["retry-after"] == "1"
        # /ready trusts a call that succeeded in the last second, then asks Redis.
        ready = eventually(lambda: not_ready(nodes[1]), timeout=3)
        assert "counters" in ready["reason"] and "unix://" not in ready["reason"]
        assert requests_recorded(nodes[0], key) == 1  # nothing served, nothing recorded
    finally:
        redis.start()
    for node in nodes:
        eventually(lambda node=node: chat(node, key).status_code == 200, timeout=10)
        assert httpx.get(node.base_url + "/ready").status_code == 200


def test_postgresql_stopped_fails_closed_with_503_then_service_resumes_by_itself(
    nodes, postgres_server
):
    key = nodes[0].create_key("through-a-database-outage")
    assert chat(nodes[1], key).status_code == 200
    postgres_server.stop()
    try:
        for node in nodes:
            refused = chat(node, key)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "accounts_unavailable"
            assert str(postgres_server.socket_dir) not in refused.text
        ready = eventually(lambda: not_ready(nodes[2]), timeout=3)
        assert "keys and usage" in ready["reason"]
        # Failing fast: refused at once, not after the pool's timeout.
        started = time.monotonic()
        assert chat(nodes[0], key).status_code == 503
        assert time.monotonic() - started < 2.0
    finally:
        postgres_server.start()
    for node in nodes:
        eventually(lambda node=node: chat(node, key).status_code == 200, timeout=15)
        eventually(lambda node=node: not_ready(node) is None, timeout=5)
    assert requests_recorded(nodes[0], key) == 1 + len(nodes)  # the refused left no row


def test_a_peer_that_dies_mid_stream_ends_the_forwarded_stream_with_an_error(
    tiny_models_dir, tmp_path_factory, accounts_url, redis, nodes
):
    a = nodes[0]
    for node in nodes:  # only the doomed peer will have tiny-b
        httpx.post(f"{node.base_url}/admin/models/tiny-b/unload", headers=node.headers)
        eventually(lambda node=node: node.model("tiny-b")["state"] == "absent")
    peer = start_node(tiny_models_dir, tmp_path_factory.mktemp("peer"), accounts_url, redis.url)
    try:
        loader = a.create_key("peer-loader", scopes=("infer", "load"))
        assert chat(peer, loader, model="tiny-b").status_code == 200
        eventually(lambda: "tiny-b" in peer_models(redis.url, peer))
        time.sleep(BEAT * 2)
        key = a.create_key("cut-off", limits=Limits(max_concurrent=1))
        stream = LongStream(a, key, model="tiny-b")
        try:
            assert stream.status == 200 and stream.first_chunk()
            peer.kill()
            rest = list(stream.lines)
        finally:
            stream.close()
        errors = [line for line in rest if "peer_unavailable" in line]
        assert errors, rest[-3:]
        assert a.model("tiny-b")["loads"] == 0
        # The entry's slot came back with the end of the stream.
        eventually(lambda: chat(a, key).status_code == 200)
    finally:
        peer.stop()


def test_download_quota_holds_across_nodes_and_a_model_downloaded_on_one_is_not_fetched_again(
    hub, tmp_path_factory, tiny_models_dir, accounts_url, redis
):
    from tests.support.downloads import REPO_ID, ask, serve

    started: list[GatewayServer] = []
    try:
        for i in range(2):
            port = free_port()
            env = {
                "GATEWAY_ACCOUNTS_URL": accounts_url,
                "GATEWAY_COUNTERS_URL": redis.url,
                "GATEWAY_COUNTERS_PREFIX": "dl:",
                "GATEWAY_CLUSTER_SECRET": SECRET,
                "GATEWAY_CLUSTER_NODE_URL": f"http://127.0.0.1:{port}",
                "GATEWAY_CLUSTER_HEARTBEAT": str(BEAT),
                "GATEWAY_ENGINE_SPARE_WORKER": "false",
            }
            data = tmp_path_factory.mktemp(f"dl-node{i}")
            started.append(serve(hub, data, tiny_models_dir, env=env, port=port))
        a, b = started
        size = hub.bytes_sent()  # nothing yet
        assert size == 0
        key = a.create_key(
            "downloader",
            scopes=("infer", "load", "download"),
            limits=Limits(download_bytes_per_day=1),  # raised below, once the size is known
        )
        # Through b first: refused by the quota before any byte of the hub is read.
        refused = ask(b, key)
        assert refused.status_code == 403
        assert hub.weight_bytes_sent() == 0
        with a.accounts() as store:
            store.update(key_id(key), limits={"download_bytes_per_day": 10**6})
        assert ask(a, key).status_code == 200
        fetched = hub.bytes_sent(REPO_ID)
        assert fetched > 0
        eventually(lambda: REPO_ID in peer_models(redis.url, a, prefix="dl:"))
        time.sleep(BEAT * 2)
        # b serves it by forwarding to a: no second download, no second load.
        served = ask(b, key)
        assert served.status_code == 200, served.text
        assert hub.bytes_sent(REPO_ID) == fetched
        # The quota counts a's bytes on b too: another repo would go past it.
        with a.accounts() as store:
            store.update(key_id(key), limits={"download_bytes_per_day": fetched + 10})
        other = ask(b, key, model="mlx-community/other")
        assert other.status_code == 403, other.text
        assert other.json()["error"]["code"] == "quota_exhausted"
        assert hub.weight_bytes_sent("mlx-community/other") == 0
    finally:
        for node in started:
            node.stop()
