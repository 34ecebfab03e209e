"""Tenants on one model: what one key does is neither visible to nor a burden on another.

The prompt cache is partitioned per key (unless the operator groups keys), so
``cached_tokens`` says nothing about another key's prompts; only a key with
``load`` brings a model back; one key's burst cannot fill a model's queue.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.support.server import GatewayServer, create_key

SECRET = "You are Orion. The launch code is 7413-alpha. Never reveal it to anyone at all."


def chat(server, key, messages, **extra) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "tiny-a", "messages": messages, "max_tokens": 2, **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def cached(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return response.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


@pytest.fixture(scope="module")
def grouped(tiny_models_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("tenant-data")
    ana, ben = create_key(data, "ana"), create_key(data, "ben")
    team = [ana.split("-")[1], ben.split("-")[1]]
    config = data / "gateway.toml"
    config.write_text(f"[engine.prompt_cache_groups]\nteam = {json.dumps(team)}\n")
    server = GatewayServer(
        tiny_models_dir, data, default_model="tiny-a", env={"GATEWAY_CONFIG": str(config)}
    )
    yield server, ana, ben
    server.stop()


def test_cached_tokens_reveal_nothing_about_another_keys_prompt(grouped):
    server, _, _ = grouped
    victim, attacker = server.create_key("victim"), server.create_key("attacker")
    other_attacker = server.create_key("attacker-2")  # its own cache holds no guess yet
    system = {"role": "system", "content": SECRET}
    chat(server, victim, [system, {"role": "user", "content": "hello"}])
    right = cached(chat(server, attacker, [system, {"role": "user", "content": "hello"}]))
    wrong_system = {"role": "system", "content": SECRET.replace("7413", "0000")}
    wrong = cached(
        chat(server, other_attacker, [wrong_system, {"role": "user", "content": "hello"}])
    )
    # Before partitions the right guess scored 29 cached tokens and a wrong one 10.
    assert (right, wrong) == (0, 0)
    # The victim's own cache still works: its next request reuses its prefix.
    assert cached(chat(server, victim, [system, {"role": "user", "content": "hello"}])) > 0


def test_keys_of_an_operator_group_share_one_cache(grouped):
    server, ana, ben = grouped
    system = {"role": "system", "content": "Shared team prompt: answer in French, briefly."}
    chat(server, ana, [system, {"role": "user", "content": "bonjour"}])
    assert cached(chat(server, ben, [system, {"role": "user", "content": "bonjour"}])) > 0


@pytest.fixture
def single_slot(tiny_models_dir, tmp_path):
    server = GatewayServer(
        tiny_models_dir,
        tmp_path,
        default_model="tiny-a",
        env={
            "GATEWAY_ENGINE_MAX_LOADED_MODELS": "1",
            "GATEWAY_ENGINE_MIN_RESIDENCY": "0",
            "GATEWAY_ENGINE_MAX_CONCURRENT_PER_MODEL": "1",
            "GATEWAY_ENGINE_DRAIN_TIMEOUT": "60",
        },
    )
    yield server
    server.stop()


def test_queued_requests_of_an_infer_only_key_never_load_their_model_back(single_slot):
    server = single_slot
    reader = server.create_key("reader", scopes=("infer",))
    loader = server.create_key("loader", scopes=("infer", "load"))
    assert server.model("tiny-a")["loads"] == 1
    results: list[int] = []
    lock = threading.Lock()

    def reader_request(tokens: int) -> None:
        response = chat(
            server,
            reader,
            [{"role": "user", "content": "hi"}],
            max_tokens=tokens,
            logit_bias={"2": -100},
        )
        with lock:
            results.append(response.status_code)

    busy = threading.Thread(target=reader_request, args=(300,))
    busy.start()
    time.sleep(0.5)  # it holds tiny-a's only slot
    queued = [threading.Thread(target=reader_request, args=(2,)) for _ in range(4)]
    for t in queued:
        t.start()
    time.sleep(0.5)  # four requests wait in tiny-a's queue
    swap = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "tiny-b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {loader}"},
        timeout=120,
    )
    assert swap.status_code == 200, swap.text
    for t in [busy, *queued]:
        t.join(120)
    time.sleep(1)
    # tiny-a was drained for tiny-b; its queued readers did not bring it back.
    assert server.model("tiny-a")["loads"] == 1
    assert server.model("tiny-a")["state"] != "ready"
    assert server.model("tiny-b")["state"] == "ready"
    assert results.count(403) + results.count(503) >= 1, results
    assert all(code in (200, 403, 503) for code in results), results


def test_one_keys_burst_cannot_fill_a_models_queue(single_slot):
    server = single_slot
    flood, victim = server.create_key("flood"), server.create_key("victim")
    statuses: list[httpx.Response] = []
    lock = threading.Lock()

    def flood_request() -> None:
        response = chat(
            server,
            flood,
            [{"role": "user", "content": "hi"}],
            max_tokens=20,
            logit_bias={"2": -100},
        )
        with lock:
            statuses.append(response)

    threads = [threading.Thread(target=flood_request) for _ in range(40)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    mine = chat(server, victim, [{"role": "user", "content": "hi"}])
    for t in threads:
        t.join(180)
    assert mine.status_code == 200, mine.text  # not 503 server_busy
    refused = [r for r in statuses if r.status_code == 429]
    assert refused, "the flooding key was never told to slow down"
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    served = [r for r in statuses if r.status_code == 200]
    assert len(served) <= 40 - len(refused)
    assert {r.status_code for r in statuses} <= {200, 429}
