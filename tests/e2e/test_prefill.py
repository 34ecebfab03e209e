"""Chunked prefill end to end: a running stream keeps receiving tokens while another
client's long prompt is prefilled, and a request cancelled mid-prefill frees its
slot.  A tiny random model with a 128k-token context makes a 6k-token prompt
that takes seconds to prefill on CPU.  Each test runs on the model as it decodes
by default on this machine (``auto``: batched for so small a model) and forced to
decode one token each in turn."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import REPO, GatewayServer

NO_EOS = {"2": -100}
LONG = "z" * 6_000  # byte-level: about 6,000 tokens, seconds to prefill on CPU


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    models = tmp_path_factory.mktemp("prefill-models")
    subprocess.run(
        [sys.executable, "-m", "tests.support.tiny_model", str(models / "long")],
        check=True,
        cwd=REPO,
    )
    config = json.loads((models / "long" / "config.json").read_text())
    config["max_position_embeddings"] = 131072
    (models / "long" / "config.json").write_text(json.dumps(config))
    data = tmp_path_factory.mktemp("prefill-data")
    (data / "gateway.toml").write_text(
        f'[models.catalogue.long-interleaved]\npath = "{models / "long"}"\n'
        'decoding = "interleaved"\n'
    )
    gateway = GatewayServer(
        models,
        data,
        default_model="long",
        env={
            "GATEWAY_CONFIG": str(data / "gateway.toml"),
            "GATEWAY_ENGINE_MIN_RESIDENCY": "0",
            "MLX_GATEWAY_WORKER_LOG_LEVEL": "DEBUG",
        },
    )
    yield gateway
    gateway.stop()


MODELS = pytest.mark.parametrize("model", ["long", "long-interleaved"])


def chat(content: str, max_tokens: int, stream: bool = True, model: str = "long") -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "logit_bias": NO_EOS,
        "stream": stream,
    }


@MODELS
def test_a_stream_keeps_receiving_tokens_while_a_long_prompt_is_prefilled(server, model):
    arrivals: list[float] = []
    long_sent = threading.Event()
    long_first: list[float] = []

    def running() -> None:
        with httpx.stream(
            "POST",
            server.base_url + "/v1/chat/completions",
            # logprobs: a chunk for every token, even one whose text is still incomplete UTF-8
            json=chat("hi", 1500, model=model) | {"logprobs": True},
            headers=server.headers,
            timeout=300,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.monotonic())

    thread = threading.Thread(target=running)
    thread.start()
    while len(arrivals) < 5:
        time.sleep(0.01)
    sent = time.monotonic()
    long_sent.set()
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json=chat(LONG, 2, model=model),
        headers=server.headers,
        timeout=300,
    ) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                long_first.append(time.monotonic())
                break
    thread.join(300)
    assert long_first, "the long prompt was answered"
    window = long_first[0] - sent
    during = [sent, *(t for t in arrivals if sent < t < long_first[0]), long_first[0]]
    longest = max(b - a for a, b in zip(during, during[1:], strict=False))
    # One decode step per slice: the running stream never waits for more than about
    # one slice.  Without slicing it waits for the whole prefill, most of the window
    # (measured with slicing switched off: a longest wait of 8.7 s in an 8.9 s window).
    assert len(during) - 2 >= 5, (len(during) - 2, window)
    assert longest < 0.5 * window, (longest, window)


@MODELS
def test_a_request_cancelled_mid_prefill_frees_its_slot(server, model):
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json=chat(LONG + "y", 2, model=model),
        headers=server.headers,
        timeout=300,
    ) as response:
        assert response.status_code == 200
        time.sleep(0.5)  # the worker is slicing its prompt now
    deadline = time.monotonic() + 60
    while server.model(model)["leases"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.model(model)["leases"] == 0
    after = httpx.post(
        server.base_url + "/v1/chat/completions",
        json=chat("hello", 3, stream=False, model=model),
        headers=server.headers,
        timeout=60,
    )
    assert after.status_code == 200


def test_a_hostile_callers_long_prompts_do_not_hold_back_anothers_short_one(server):
    """Callers take turns at prefill slices: a second key's short prompt is answered
    while the first key's two long prompts are still being prefilled."""
    hostile = server.create_key("prefill-hostile", scopes=("infer",))
    victim = server.create_key("prefill-victim", scopes=("infer",))
    finished: dict[str, float] = {}

    def ask(name: str, key: str, content: str) -> None:
        response = httpx.post(
            server.base_url + "/v1/chat/completions",
            json=chat(content, 1, stream=False),
            headers={"Authorization": f"Bearer {key}"},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        finished[name] = time.monotonic()

    threads = [
        threading.Thread(target=ask, args=(f"long{i}", hostile, LONG + str(i))) for i in range(2)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while server.model("long")["serving"]["prefilling"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.model("long")["serving"]["prefilling"] == 2, "both long prompts are in"
    ask("victim", victim, "hi")
    for thread in threads:
        thread.join(300)
    assert finished["victim"] < min(finished["long0"], finished["long1"]), finished
