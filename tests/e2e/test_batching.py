"""Many requests on one model, end to end: continuous batching and KV-aware admission.

One gateway serves the same tiny random-weight model under three ids: one that
decodes batched, one that decodes one token each in turn, and one with a small KV
budget.  Greedy (and seeded) outputs must not depend on the mode or on the
company a request keeps; a request that would overflow the KV budget waits in
the fair queue and is then served, and no caller, however it asks, gets more
reserved than the budget.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.server import GatewayServer

NO_EOS = {"2": -100}
KV_BUDGET = 600


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory) -> Iterator[GatewayServer]:
    data = tmp_path_factory.mktemp("batching-data")
    path = tiny_models_dir / "tiny-a"
    config = data / "gateway.toml"
    config.write_text(
        f"""
[models.catalogue.batched]
path = "{path}"
decoding = "batched"

[models.catalogue.interleaved]
path = "{path}"
decoding = "interleaved"

[models.catalogue.small-kv]
path = "{path}"
decoding = "batched"
kv_budget = {KV_BUDGET}
"""
    )
    gateway = GatewayServer(
        tiny_models_dir,
        data,
        default_model="tiny-a",
        env={
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_ENGINE_MIN_RESIDENCY": "0",
            "GATEWAY_ENGINE_QUEUE_PER_KEY": "16",
        },
    )
    yield gateway
    gateway.stop()


def chat(server: GatewayServer, model: str, content: str, key: str | None = None, **body) -> dict:
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "logit_bias": NO_EOS,
            **body,
        },
        headers={"Authorization": f"Bearer {key or server.admin_key}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


PROMPTS = [
    "hi",
    "a somewhat longer prompt, so the batch holds sequences of different lengths",
    "x" * 300,
    "the fourth one",
]


def outputs(server: GatewayServer, model: str, together: bool, **body) -> list[str]:
    def one(content: str) -> str:
        return chat(server, model, content, max_tokens=24, **body)["choices"][0]["message"][
            "content"
        ]

    if not together:
        return [one(p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(one, PROMPTS))


def test_admin_models_reports_how_each_model_decodes_and_why(server):
    for model in ("batched", "interleaved", "tiny-a"):
        chat(server, model, "hi", max_tokens=1)
    serving = {m: server.model(m)["serving"] for m in ("batched", "interleaved", "tiny-a")}
    assert serving["batched"]["decoding"] == "batched"
    assert serving["batched"]["decoding_reason"] == "configured (decoding = batched)"
    assert serving["interleaved"]["decoding"] == "interleaved"
    assert "measured at load" in serving["tiny-a"]["decoding_reason"]
    # The default KV budget: max_concurrent_per_model (4) sequences at the context.
    assert serving["batched"]["kv_budget_tokens"] == 4 * 2048
    assert serving["batched"]["kv_reserved_tokens"] == 0  # nothing runs now
    metrics = httpx.get(server.base_url + "/metrics", headers=server.headers).text
    assert 'gateway_decoding_mode{mode="batched",model="batched"} 1.0' in metrics
    assert 'gateway_decoding_mode{mode="batched",model="interleaved"} 0.0' in metrics
    assert 'gateway_kv_budget_tokens{model="small-kv"}' not in metrics  # never loaded


def test_greedy_outputs_are_the_same_alone_interleaved_and_batched(server):
    alone = outputs(server, "interleaved", together=False)
    assert len(set(alone)) > 1, "the prompts give different answers"
    assert outputs(server, "interleaved", together=True) == alone
    assert outputs(server, "batched", together=False) == alone
    assert outputs(server, "batched", together=True) == alone


def test_seeded_sampling_is_the_same_alone_and_batched(server):
    seeded = {"temperature": 0.9, "seed": 7}
    alone = outputs(server, "interleaved", together=False, **seeded)
    assert outputs(server, "batched", together=True, **seeded) == alone


def test_stop_strings_logprobs_and_penalties_hold_in_a_batch(server):
    def one(content: str) -> dict:
        return chat(
            server,
            "batched",
            content,
            max_tokens=20,
            logprobs=True,
            top_logprobs=2,
            frequency_penalty=1.5,
        )["choices"][0]

    alone = [one(p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(one, PROMPTS))
    for a, b in zip(alone, together, strict=True):
        assert a["message"]["content"] == b["message"]["content"]
        assert [t["token"] for t in a["logprobs"]["content"]] == [
            t["token"] for t in b["logprobs"]["content"]
        ]
    # A stop string taken from one answer ends that answer there, even in a batch.
    text = alone[1]["message"]["content"]
    stop = text[5:8]
    with ThreadPoolExecutor(2) as pool:
        stopped, other = pool.map(
            lambda p: chat(server, "batched", p[0], max_tokens=20, frequency_penalty=1.5, **p[1]),
            [(PROMPTS[1], {"stop": [stop]}), (PROMPTS[0], {})],
        )
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["message"]["content"] == text[: text.index(stop)]
    assert other["choices"][0]["message"]["content"] == alone[0]["message"]["content"]


def stream(server, model, content, max_tokens, key, arrivals: list[float]) -> dict:
    usage: dict = {}
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "logit_bias": NO_EOS,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if '"content":"' in line:
                arrivals.append(time.monotonic())
            if '"usage":{' in line and '"completion_tokens"' in line:
                usage = json.loads(line.removeprefix("data: "))["usage"]
    return usage


def test_a_request_that_would_overflow_the_kv_budget_waits_then_is_served(server):
    chat(server, "small-kv", "warm", max_tokens=1)
    first_key = server.create_key("kv-first", scopes=("infer",))
    hostile = server.create_key("kv-hostile", scopes=("infer",))
    first_arrivals: list[float] = []
    second_arrivals: list[float] = []
    results: dict[str, dict] = {}
    first = threading.Thread(
        target=lambda: results.__setitem__(
            "first", stream(server, "small-kv", "hi", 5000, first_key, first_arrivals)
        )
    )
    first.start()
    while not first_arrivals:
        time.sleep(0.005)
    # The hostile caller asks for far more than the budget: clamped, and it waits.
    second = threading.Thread(
        target=lambda: results.__setitem__(
            "second", stream(server, "small-kv", "hello", 5000, hostile, second_arrivals)
        )
    )
    second.start()
    seen_waiting, most_reserved = False, 0
    while first.is_alive() or second.is_alive():
        view = server.model("small-kv")
        most_reserved = max(most_reserved, view["serving"]["kv_reserved_tokens"])
        if view["waiting"] and "KV cache" in view["waiting"][0]["reason"]:
            seen_waiting = True
        time.sleep(0.02)
    first.join()
    second.join()
    assert seen_waiting, "the second request waited for KV cache"
    assert 0 < most_reserved <= KV_BUDGET
    # Both ask for the whole budget, so most_reserved <= KV_BUDGET already shows they
    # never ran together.  The arrival times are taken by two client threads that read
    # their sockets in turn (and a read may carry several chunks), so the first's last
    # chunk can be stamped a moment after the second's first one: allow a quarter second.
    assert second_arrivals[0] > first_arrivals[-1] - 0.25, "it ran once the first had finished"
    assert second_arrivals[0] > first_arrivals[len(first_arrivals) // 2]
    for name in ("first", "second"):
        usage = results[name]
        assert usage["prompt_tokens"] + usage["completion_tokens"] == KV_BUDGET, usage
    assert server.model("small-kv")["serving"]["kv_reserved_tokens"] == 0


def test_many_callers_never_reserve_more_than_the_budget(server):
    chat(server, "small-kv", "warm", max_tokens=1)
    keys = [server.create_key(f"kv-many-{i}", scopes=("infer",)) for i in range(3)]
    done = threading.Event()
    most = [0]

    def watch() -> None:
        while not done.is_set():
            serving = server.model("small-kv")["serving"] or {}
            most[0] = max(most[0], serving.get("kv_reserved_tokens", 0))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda i: chat(server, "small-kv", f"caller {i}", keys[i % 3], max_tokens=150),
                range(6),
            )
        )
    done.set()
    watcher.join()
    assert all(a["usage"]["completion_tokens"] == 150 for a in answers)
    assert 0 < most[0] <= KV_BUDGET


def test_n_choices_share_the_kv_budget(server):
    answer = chat(server, "small-kv", "hi", max_tokens=5000, n=2)
    prompt = answer["usage"]["prompt_tokens"]
    for choice in answer["choices"]:
        assert choice["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 2 * (KV_BUDGET // 2 - prompt)


def test_a_prompt_that_leaves_no_room_in_the_kv_budget_is_refused(server):
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={
            "model": "small-kv",
            "messages": [{"role": "user", "content": "z" * (KV_BUDGET + 50)}],
            "max_tokens": 1,
        },
        headers=server.headers,
        timeout=60,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "KV budget" in response.json()["error"]["message"]


def test_a_streaming_request_for_a_busy_model_waits_behind_keepalives(
    tiny_models_dir, tmp_path_factory
):
    """Busy (its KV budget taken): a streaming request waits behind keep-alives up
    to stream_load_wait and is served; a plain one gets 503 after load_wait."""
    data = tmp_path_factory.mktemp("busy-data")
    config = data / "gateway.toml"
    config.write_text(
        f'[models.catalogue.one-seq]\npath = "{tiny_models_dir / "tiny-a"}"\nkv_budget = 2048\n'
    )
    gateway = GatewayServer(
        tiny_models_dir,
        data,
        default_model="one-seq",
        env={"GATEWAY_CONFIG": str(config), "GATEWAY_ENGINE_LOAD_WAIT": "0.5"},
    )
    try:
        busy: dict = {}
        hog_done: list[float] = []

        def hog() -> None:
            busy.update(chat(gateway, "one-seq", "hi", max_tokens=5000))
            hog_done.append(time.monotonic())

        hogging = threading.Thread(target=hog)
        hogging.start()
        while not gateway.model("one-seq")["serving"]["kv_reserved_tokens"]:
            time.sleep(0.005)
        plain = httpx.post(
            gateway.base_url + "/v1/chat/completions",
            json={"model": "one-seq", "messages": [{"role": "user", "content": "x"}]},
            headers=gateway.headers,
            timeout=60,
        )
        assert plain.status_code == 503, plain.text
        assert hogging.is_alive(), "the hog outlasts load_wait"
        sent = time.monotonic()
        lines: list[str] = []
        first: list[float] = []
        with httpx.stream(
            "POST",
            gateway.base_url + "/v1/chat/completions",
            json={
                "model": "one-seq",
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 8,
                "logit_bias": NO_EOS,
                "stream": True,
            },
            headers=gateway.headers,
            timeout=120,
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(line)
                if '"content":"' in line and not first:
                    first.append(time.monotonic())
        hogging.join(120)
        assert busy["choices"][0]["finish_reason"] == "length"
        assert "data: [DONE]" in lines and first
        # It started once the hog had released the KV cache (the hog's own response
        # reaches its client a moment after that release).
        assert first[0] > hog_done[0] - 0.25, (first[0], hog_done[0])
        waited = first[0] - sent
        assert waited > 0.5, waited  # longer than load_wait, and not refused
    finally:
        gateway.stop()
