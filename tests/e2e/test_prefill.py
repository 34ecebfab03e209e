"""Chunked prefill end to end: a running stream keeps receiving tokens while another
client's long prompt is prefilled, and a request cancelled mid-prefill frees its
slot.  A tiny random model with a 128k-token context makes a 6k-token prompt
that takes seconds to prefill on CPU."""

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
    gateway = GatewayServer(models, tmp_path_factory.mktemp("prefill-data"), default_model="long")
    yield gateway
    gateway.stop()


def chat(content: str, max_tokens: int, stream: bool = True) -> dict:
    return {
        "model": "long",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "logit_bias": NO_EOS,
        "stream": stream,
    }


def test_a_stream_keeps_receiving_tokens_while_a_long_prompt_is_prefilled(server):
    arrivals: list[float] = []
    long_sent = threading.Event()
    long_first: list[float] = []

    def running() -> None:
        with httpx.stream(
            "POST",
            server.base_url + "/v1/chat/completions",
            json=chat("hi", 1500),
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
        json=chat(LONG, 2),
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


def test_a_request_cancelled_mid_prefill_frees_its_slot(server):
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json=chat(LONG + "y", 2),
        headers=server.headers,
        timeout=300,
    ) as response:
        assert response.status_code == 200
        time.sleep(0.5)  # the worker is slicing its prompt now
    deadline = time.monotonic() + 60
    while server.model("long")["leases"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.model("long")["leases"] == 0
    after = httpx.post(
        server.base_url + "/v1/chat/completions",
        json=chat("hello", 3, stream=False),
        headers=server.headers,
        timeout=60,
    )
    assert after.status_code == 200
