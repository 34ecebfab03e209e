"""On-demand loading with real worker processes: swaps, budgets and the admin API.

Three real models: the bundled SmolLM2 and two tiny random-weight models.
Needs (weights + KV budget + 256 MiB worker overhead): bundled about 1.06 GiB
(its KV budget is 4 sequences of 8,192 tokens), each tiny one about 258 MiB.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.support.fake_models import fake_model_dir
from tests.support.server import GatewayServer

NO_EOS = {"2": -100}  # keep random models from ending early
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def three_models(bundled_models_dir, tiny_models_dir, tmp_path_factory):
    models = tmp_path_factory.mktemp("three-models")
    (models / "smollm2-135m-instruct").symlink_to(bundled_models_dir / "smollm2-135m-instruct")
    for name in ("tiny-a", "tiny-b"):
        (models / name).symlink_to(tiny_models_dir / name)
    fake_model_dir(models / "enormous", 400 * 1024**3)  # declares 400 GiB of weights
    fake_model_dir(models / "corrupt", 1024)  # a header and no tensor data: the load fails
    return models


def serve(models, tmp_path_factory, **env) -> GatewayServer:
    settings = {f"GATEWAY_ENGINE_{k.upper()}": str(v) for k, v in env.items()}
    return GatewayServer(
        models, tmp_path_factory.mktemp("data"), default_model="tiny-a", env=settings
    )


@pytest.fixture(scope="module")
def single_model_server(three_models, tmp_path_factory):
    server = serve(
        three_models, tmp_path_factory, max_loaded_models=1, min_residency=0, drain_timeout=120
    )
    yield server
    server.stop()


def sdk(server: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=server.admin_key, max_retries=0)


def states(server: GatewayServer) -> dict[str, str]:
    models = httpx.get(server.base_url + "/admin/models", headers=server.headers).json()["data"]
    return {m["id"]: m["state"] for m in models}


def wait_for_state(server: GatewayServer, model: str, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while states(server)[model] != state:
        assert time.monotonic() < deadline, f"{model} never became {state}: {states(server)}"
        time.sleep(0.1)


def test_streams_on_a_finish_in_full_when_b_needs_the_slot(single_model_server):
    server = single_model_server
    results: dict[int, tuple[str, int]] = {}
    started = threading.Barrier(4)

    def stream_from_a(i: int) -> None:
        with sdk(server) as client:
            stream = client.chat.completions.create(
                model="tiny-a",
                messages=[{"role": "user", "content": f"client {i}"}],
                max_tokens=600,
                logit_bias=NO_EOS,
                stream=True,
                stream_options={"include_usage": True},
            )
            text, finish, usage = "", None, 0
            for n, chunk in enumerate(stream):
                if n == 2:
                    started.wait(30)
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    finish = choice.finish_reason or finish
                if chunk.usage:
                    usage = chunk.usage.completion_tokens
            results[i] = (finish, usage)

    threads = [threading.Thread(target=stream_from_a, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    started.wait(30)  # all three are streaming from a
    with sdk(server) as client:
        reply = client.chat.completions.create(model="tiny-b", messages=HELLO, max_tokens=5)
    for t in threads:
        t.join(120)
    assert results == {i: ("length", 600) for i in range(3)}  # zero lost, nothing cut short
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert states(server)["tiny-a"] == "absent"
    assert states(server)["tiny-b"] == "ready"


def test_model_over_the_budget_gets_507_and_nothing_is_unloaded(single_model_server):
    server = single_model_server
    with sdk(server) as client:
        client.chat.completions.create(model="tiny-b", messages=HELLO, max_tokens=2)
        before = server.model("tiny-b")
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="enormous", messages=HELLO, max_tokens=2)
    assert refused.value.status_code == 507
    assert refused.value.code == "insufficient_memory"
    assert "GiB" in refused.value.message and "budget" in refused.value.message
    after = server.model("tiny-b")
    assert (after["state"], after["pid"]) == ("ready", before["pid"])
    assert states(server)["enormous"] == "absent"


def test_failed_load_reports_its_reason_and_leaves_the_registry_consistent(
    single_model_server,
):
    server = single_model_server
    with sdk(server) as client:
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model="corrupt", messages=HELLO, max_tokens=2)
        assert failed.value.status_code == 503
        assert failed.value.code == "model_unavailable"
        assert "failed to load" in failed.value.message
        entry = server.model("corrupt")
        assert entry["state"] == "failed" and entry["error"]
        reply = client.chat.completions.create(model="tiny-b", messages=HELLO, max_tokens=2)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_admin_load_and_unload_drive_the_registry(single_model_server):
    server = single_model_server
    response = httpx.post(server.base_url + "/admin/models/tiny-a/load", headers=server.headers)
    assert response.status_code == 202
    assert response.headers["location"] == "/admin/models/tiny-a"
    wait_for_state(server, "tiny-a", "ready")
    assert states(server)["tiny-b"] == "absent"  # single-model mode swapped it out
    pid = server.model("tiny-a")["pid"]
    assert (
        httpx.post(
            server.base_url + "/admin/models/tiny-a/unload", headers=server.headers
        ).status_code
        == 202
    )
    wait_for_state(server, "tiny-a", "absent")
    assert pid not in server.workers()  # the worker process is gone: its memory is back
    missing = httpx.post(server.base_url + "/admin/models/ghost/load", headers=server.headers)
    assert missing.status_code == 404


def test_streaming_request_for_an_unloaded_model_waits_and_streams(single_model_server):
    server = single_model_server
    wait_for_state(server, "tiny-a", "absent")
    with sdk(server) as client:
        stream = client.chat.completions.create(
            model="tiny-a", messages=HELLO, max_tokens=5, logit_bias=NO_EOS, stream=True
        )
        finishes = [c.choices[0].finish_reason for c in stream if c.choices]
    assert finishes[-1] == "length"


def test_alternating_clients_do_not_swap_per_request(three_models, tmp_path_factory):
    server = serve(three_models, tmp_path_factory, max_loaded_models=1, min_residency=1.5)
    try:
        loads_before = sum(server.model(m)["loads"] for m in ("tiny-a", "tiny-b"))
        per_client = 8

        def client_loop(model: str) -> None:
            with sdk(server) as client:
                for _ in range(per_client):
                    client.chat.completions.create(model=model, messages=HELLO, max_tokens=3)

        threads = [threading.Thread(target=client_loop, args=(m,)) for m in ("tiny-a", "tiny-b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        loads = sum(server.model(m)["loads"] for m in ("tiny-a", "tiny-b")) - loads_before
        assert loads <= per_client  # 16 alternating requests, far fewer swaps
    finally:
        server.stop()


def test_budget_for_two_evicts_the_least_recently_used_of_three(three_models, tmp_path_factory):
    # Room for two tiny ones, or the bundled one and neither tiny one.
    server = serve(three_models, tmp_path_factory, memory_budget="1200MiB", min_residency=0)
    try:
        with sdk(server) as client:
            for model in ("smollm2-135m-instruct", "tiny-a", "tiny-b"):
                client.chat.completions.create(model=model, messages=HELLO, max_tokens=2)
        wait_for_state(server, "smollm2-135m-instruct", "absent")
        assert states(server)["tiny-a"] == "ready"
        assert states(server)["tiny-b"] == "ready"
        admin = httpx.get(server.base_url + "/admin/models", headers=server.headers).json()
        assert admin["memory_used_bytes"] <= admin["memory_budget_bytes"]
    finally:
        server.stop()


def test_request_waits_load_wait_then_503_model_loading(three_models, tmp_path_factory):
    server = serve(three_models, tmp_path_factory, load_wait=0.001, spare_worker="false")
    try:
        with sdk(server) as client:
            with pytest.raises(openai.InternalServerError) as loading:
                client.chat.completions.create(model="tiny-b", messages=HELLO, max_tokens=2)
            assert loading.value.status_code == 503
            assert loading.value.code == "model_loading"
            assert int(loading.value.response.headers["retry-after"]) >= 1
            wait_for_state(server, "tiny-b", "ready")  # the load went on
            reply = client.chat.completions.create(model="tiny-b", messages=HELLO, max_tokens=2)
        assert reply.usage.completion_tokens >= 1
    finally:
        server.stop()
