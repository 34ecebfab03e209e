"""Ollama's ``POST /api/pull`` and ``DELETE /api/delete`` end to end, with the real
``ollama`` client against a real gateway and a local hub (SPEC.md section 2, step 7).

A pull is a download under every download rule: the key's allowlist, the
``infer``, ``load`` and ``download`` scopes, downloads enabled, the operator's
repo allowlist, the sizes from the hub's metadata against ``max_model_size``, the
disk budget and the key's daily quota, all before the first byte; then Ollama's
progress objects.  Every refusal is Ollama's ``{"error": "..."}`` and is checked
against the hub's own counters: zero bytes fetched, no snapshot complete,
nothing consumed.

One hub and a few gateways (one per ``[downloads]`` configuration) serve the
whole module; each test pulls repos no other test pulls, so the tests do not
depend on each other's order.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from policies.principal import Limits
from tests.support.downloads import FULL, REPO_ID, serve, snapshot_complete
from tests.support.local_hub import LocalHub
from tests.support.server import GatewayServer

OTHER = "mlx-community/other"  # two keys share its download
THIRD = "mlx-community/third"  # its puller goes away mid-download
QUIET = "mlx-community/quiet"  # pulled without streaming
DOOMED = "mlx-community/doomed"  # pulled, then deleted
REFUSED = "mlx-community/refused"  # every refusal names it: never on disk
HELLO = [{"role": "user", "content": "hi"}]
FINAL = ["verifying sha256 digest", "writing manifest", "success"]


@pytest.fixture(scope="module")
def hub(tiny_repo_dirs: dict[str, Path]) -> Iterator[LocalHub]:
    """The module's hub (the conftest's is per test): its counters are reset per test."""
    with LocalHub() as hub:
        for repo, folder in [
            (REPO_ID, "tiny-dl"),
            (OTHER, "other"),
            (THIRD, "third"),
            (QUIET, "other"),
            (DOOMED, "third"),
            (REFUSED, "tiny-dl"),
            ("evil-org/tiny", "evil"),
        ]:
            hub.add_repo(repo, tiny_repo_dirs[folder])
        yield hub


@pytest.fixture(autouse=True)
def fresh_hub(hub: LocalHub) -> Iterator[None]:
    hub.reset_counters()
    hub.bytes_per_second = None
    yield
    hub.bytes_per_second = None


@pytest.fixture(scope="module")
def gateways(
    hub: LocalHub, tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., GatewayServer]]:
    """A gateway per ``[downloads]`` configuration, started on first use."""
    started: dict[tuple[tuple[str, str], ...], GatewayServer] = {}

    def gateway(**downloads: str) -> GatewayServer:
        config = tuple(sorted(downloads.items()))
        if config not in started:
            data = tmp_path_factory.mktemp("pull")
            started[config] = serve(hub, data, tiny_models_dir, **downloads)
        return started[config]

    yield gateway
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module")
def server(gateways: Callable[..., GatewayServer]) -> GatewayServer:
    """Downloads on, ``mlx-community/*`` allowed, no size limits."""
    return gateways()


@pytest.fixture
def clients() -> Iterator[Callable[[GatewayServer, str], ollama.Client]]:
    """Ollama clients for a key, closed after the test."""
    made: list[ollama.Client] = []

    def make(server: GatewayServer, key: str) -> ollama.Client:
        client = ollama.Client(
            host=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def raw(
    server: GatewayServer, key: str, body: dict[str, Any], method: str = "POST"
) -> httpx.Response:
    path = "/api/pull" if method == "POST" else "/api/delete"
    return httpx.request(method, server.base_url + path, json=body, headers=auth(key), timeout=120)


def assert_ollama_error(response: httpx.Response, status: int) -> str:
    """The response is Ollama's error (``{"error": "..."}`` and nothing else)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


def listed(client: ollama.Client) -> set[str]:
    return {m.model for m in client.list().models if m.model}


def usage_requests(server: GatewayServer, key: str) -> int:
    with server.accounts() as store:
        rows = store.usage_summary(key_id=key.split("-")[1])
    return sum(r["requests"] for r in rows)


def repo_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def wait_for(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_permitted_pull_streams_ollamas_progress_then_lists_and_serves_the_model(
    server, hub, clients, tiny_repo_dirs
):
    hub.bytes_per_second = 500_000  # under a second: a few progress objects
    key = server.create_key("puller", scopes=FULL)
    client = clients(server, key)
    parts = list(client.pull(REPO_ID, stream=True))
    statuses = [p.status for p in parts]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == FINAL
    progress = parts[1:-3]
    assert progress, statuses
    (digest,) = {p.digest for p in progress}
    assert digest and digest.startswith("sha256:")
    assert all(p.status == f"pulling {digest[7:19]}" for p in progress)
    assert re.fullmatch(r"pulling [0-9a-f]{12}", progress[0].status)
    (total,) = {p.total for p in progress}
    assert total == repo_bytes(tiny_repo_dirs["tiny-dl"])
    completed = [p.completed for p in progress]
    assert completed == sorted(completed) and completed[-1] == total
    assert hub.bytes_sent(REPO_ID) == total
    assert snapshot_complete(server.data_dir)
    assert f"{REPO_ID}:latest" in listed(client)
    reply = client.chat(model=REPO_ID, messages=HELLO, options={"num_predict": 2})
    assert reply.done and reply.message.role == "assistant"
    # The same model under its Ollama tag: on disk already, nothing fetched again.
    assert client.pull(REPO_ID + ":latest", stream=False).status == "success"
    assert hub.bytes_sent() == total


def test_pull_without_stream_answers_success_once_downloaded_and_latest_is_the_model(
    server, hub, clients
):
    key = server.create_key("quiet", scopes=FULL)
    client = clients(server, key)
    done = client.pull(QUIET + ":latest", stream=False)
    assert done.status == "success"
    assert snapshot_complete(server.data_dir, QUIET)  # done means on disk
    assert f"{QUIET}:latest" in listed(client)
    sent = hub.bytes_sent(QUIET)
    assert sent > 0
    assert [p.status for p in client.pull(QUIET, stream=True)] == ["pulling manifest", "success"]
    assert hub.bytes_sent() == sent


def test_pulling_a_model_on_disk_answers_success_at_once_and_fetches_nothing(server, hub, clients):
    key = server.create_key("local", scopes=FULL)
    client = clients(server, key)
    assert [p.status for p in client.pull("tiny-a", stream=True)] == [
        "pulling manifest",
        "success",
    ]
    assert client.pull("tiny-a:latest", stream=False).status == "success"
    assert hub.bytes_sent() == 0
    assert hub.requests == []  # not even the metadata


# (case, the name pulled (None: no `model`), scopes, allowlist, limits, [downloads],
#  status, words the error holds)
REFUSALS = [
    ("no download scope", REFUSED, ("infer", "load"), None, None, {}, 403, "`download`"),
    ("no load scope", REFUSED, ("infer", "download"), None, None, {}, 403, "`load`"),
    ("repo not allowed", "evil-org/tiny", FULL, None, None, {}, 403, "tiny is not allowed"),
    (
        "key allowlist excludes it",
        REFUSED,
        FULL,
        ("tiny-*",),
        None,
        {},
        403,
        "may not use",
    ),
    ("downloads disabled", REFUSED, FULL, None, None, {"enabled": "false"}, 404, "not exist"),
    (
        "over max_model_size",
        REFUSED,
        FULL,
        None,
        None,
        {"max_model_size": "1KB"},
        507,
        "max_model_size",
    ),
    ("over disk budget", REFUSED, FULL, None, None, {"disk_budget": "10KB"}, 507, "of disk"),
    (
        "over daily quota",
        REFUSED,
        FULL,
        None,
        Limits(download_bytes_per_day=1000),
        {},
        403,
        "quota",
    ),
    ("unknown repo", "mlx-community/ghost", FULL, None, None, {}, 404, "ghost"),
    ("malformed name", "mlx-community/../etc", FULL, None, None, {}, 400, "valid model"),
    ("missing model", None, FULL, None, None, {}, 400, "`model`"),
]


@pytest.mark.parametrize(
    ("case", "body", "scopes", "models", "limits", "downloads", "status", "words"),
    REFUSALS,
    ids=[r[0] for r in REFUSALS],
)
def test_pull_refused_before_any_byte_in_ollamas_shape(
    gateways, hub, clients, case, body, scopes, models, limits, downloads, status, words
):
    server = gateways(**downloads)
    key = server.create_key("refused", scopes=scopes, models=models or ("*",), limits=limits)
    response = raw(server, key, {} if body is None else {"model": body})
    assert words in assert_ollama_error(response, status)
    if body is not None:  # and the same through Ollama's client, streaming
        with pytest.raises(ollama.ResponseError) as refused:
            list(clients(server, key).pull(body, stream=True))
        assert refused.value.status_code == status
        assert refused.value.error == response.json()["error"]
    assert hub.bytes_sent() == 0
    assert not snapshot_complete(server.data_dir, REFUSED)
    assert not snapshot_complete(server.data_dir, "evil-org/tiny")
    assert usage_requests(server, key) == 0


def test_hostile_key_racing_eight_pulls_without_download_scope_fetches_nothing(server, hub):
    key = server.create_key("hostile", scopes=("infer",))
    results: list[httpx.Response] = []
    start = threading.Barrier(8)

    def one() -> None:
        start.wait()
        results.append(raw(server, key, {"model": REFUSED}))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8
    for response in results:
        assert "`load`" in assert_ollama_error(response, 403)
    assert hub.bytes_sent() == 0
    assert hub.requests == []  # refused before the hub was asked anything
    assert not snapshot_complete(server.data_dir, REFUSED)


def test_refused_pull_consumes_nothing_of_the_keys_rate_limit(server, hub, clients):
    key = server.create_key(
        "one-shot", scopes=("infer", "load"), limits=Limits(requests_per_minute=1)
    )
    assert_ollama_error(raw(server, key, {"model": REFUSED}), 403)
    assert clients(server, key).pull("tiny-a", stream=False).status == "success"
    assert hub.bytes_sent() == 0


def test_rate_limited_pull_asks_the_hub_nothing(server, hub, clients):
    key = server.create_key("hasty", scopes=FULL, limits=Limits(requests_per_minute=1))
    assert clients(server, key).pull("tiny-a", stream=False).status == "success"
    refused = raw(server, key, {"model": REFUSED})
    assert_ollama_error(refused, 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert hub.requests == []
    assert not snapshot_complete(server.data_dir, REFUSED)


def test_two_keys_pulling_the_same_repo_share_one_download(server, hub, clients, tiny_repo_dirs):
    hub.bytes_per_second = 200_000  # about two seconds: the second pull joins the first
    first = clients(server, server.create_key("first", scopes=FULL))
    second = clients(server, server.create_key("second", scopes=FULL))
    streamed: list[str] = []

    def pull_streaming() -> None:
        streamed.extend(p.status for p in first.pull(OTHER, stream=True))

    thread = threading.Thread(target=pull_streaming)
    thread.start()
    try:
        wait_for(lambda: hub.bytes_sent(OTHER) > 0, 30)
        assert second.pull(OTHER, stream=False).status == "success"
    finally:
        thread.join(60)
    assert streamed[0] == "pulling manifest" and streamed[-3:] == FINAL
    assert hub.bytes_sent(OTHER) == repo_bytes(tiny_repo_dirs["other"])  # one copy
    weights = [p for m, p in hub.requests if m == "GET" and p.endswith("model.safetensors")]
    assert len(weights) == 1
    assert f"{OTHER}:latest" in listed(second)


def test_client_leaving_mid_pull_neither_stops_the_download_nor_keeps_its_slot(
    server, hub, clients
):
    hub.bytes_per_second = 100_000  # about four seconds
    key = server.create_key("leaver", scopes=FULL, limits=Limits(max_concurrent=1))
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST", server.base_url + "/api/pull", json={"model": THIRD}, headers=auth(key)
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert json.loads(next(lines)) == {"status": "pulling manifest"}
        assert json.loads(next(lines))["status"].startswith("pulling ")
    client = clients(server, key)

    def slot_free() -> bool:
        try:
            return client.pull("tiny-a", stream=False).status == "success"
        except ollama.ResponseError as exc:
            assert exc.status_code == 429, exc
            return False

    wait_for(slot_free, 2)  # released when the client left, not when the download ends
    assert not snapshot_complete(server.data_dir, THIRD)
    wait_for(lambda: snapshot_complete(server.data_dir, THIRD))
    wait_for(lambda: f"{THIRD}:latest" in listed(client), 10)
    reply = client.chat(model=THIRD, messages=HELLO, options={"num_predict": 2})
    assert reply.done


def test_delete_is_an_admins_and_removes_a_downloaded_model(server, hub, clients):
    admin = clients(server, server.admin_key)
    assert admin.pull(DOOMED, stream=False).status == "success"
    admin.chat(model=DOOMED, messages=HELLO, options={"num_predict": 2})  # loaded: drained
    member = server.create_key("member", scopes=FULL)  # every scope but admin
    refused = raw(server, member, {"model": DOOMED}, method="DELETE")
    assert "admin" in assert_ollama_error(refused, 403)
    with pytest.raises(ollama.ResponseError) as denied:
        clients(server, member).delete(DOOMED)
    assert denied.value.status_code == 403
    assert snapshot_complete(server.data_dir, DOOMED)
    assert admin.delete(DOOMED + ":latest").status == "success"
    assert not snapshot_complete(server.data_dir, DOOMED)
    assert f"{DOOMED}:latest" not in listed(admin)
    assert server.model(DOOMED)["state"] == "absent"
    assert_ollama_error(raw(server, server.admin_key, {"model": DOOMED}, method="DELETE"), 404)
    ghost = raw(server, server.admin_key, {"model": "no-such-model"}, method="DELETE")
    assert "no-such-model" in assert_ollama_error(ghost, 404)
    hub.reset_counters()
    assert admin.pull(DOOMED, stream=False).status == "success"  # downloaded again
    assert hub.bytes_sent(DOOMED) > 0 and snapshot_complete(server.data_dir, DOOMED)
