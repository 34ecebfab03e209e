"""Worker processes under stress: client disconnects, killed workers, interleaving.

These run on a tiny random-weight model (hundreds of tokens per second), so a
long generation is cheap to start and easy to interrupt.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.support.server import cpu_seconds

HELLO = [{"role": "user", "content": "hello"}]
LONG = 1900  # tokens: several seconds of work on the tiny model
NO_EOS = {"2": -100}  # a random model may pick <|im_end|> early: forbid it


def worker_of(server, model: str = "tiny-a") -> int:
    pid = server.model(model)["pid"]
    assert pid in server.workers()
    return pid


def busy_cpu(pid: int, window: float = 1.0) -> float:
    before = cpu_seconds(pid)
    time.sleep(window)
    return cpu_seconds(pid) - before


def test_client_disconnect_mid_stream_stops_generation_in_the_worker(tiny_server, make_client):
    worker = worker_of(tiny_server)
    body = {
        "model": "tiny-a",
        "messages": HELLO,
        "max_tokens": LONG,
        "stream": True,
        "logit_bias": NO_EOS,
    }
    url = tiny_server.base_url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=tiny_server.headers) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in received)
    # The generation would keep a core busy for seconds; after the disconnect it must stop.
    time.sleep(0.3)
    assert busy_cpu(worker) < 0.3
    reply = make_client(tiny_server).chat.completions.create(
        model="tiny-a", messages=HELLO, max_tokens=4
    )
    assert reply.usage.completion_tokens >= 1


def test_sdk_closing_a_stream_early_frees_the_worker(tiny_server, make_client):
    worker = worker_of(tiny_server)
    stream = make_client(tiny_server).chat.completions.create(
        model="tiny-a", messages=HELLO, max_tokens=LONG, logit_bias=NO_EOS, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    time.sleep(0.3)
    assert busy_cpu(worker) < 0.3


def test_concurrent_streams_are_interleaved_and_both_complete(tiny_server, make_client):
    results: dict[int, tuple[str, int]] = {}

    sdk = make_client(tiny_server)

    def run(i: int) -> None:
        stream = sdk.chat.completions.create(
            model="tiny-a",
            messages=[{"role": "user", "content": f"request {i}"}],
            max_tokens=200,
            stream=True,
            stream_options={"include_usage": True},
        )
        finish, usage = None, None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        results[i] = (finish, usage)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 3
    for finish, usage in results.values():
        assert finish in ("stop", "length")
        assert usage and usage >= 1


def test_killed_worker_ends_stream_with_error_and_gateway_keeps_serving(tiny_server, make_client):
    worker = worker_of(tiny_server)
    stream = make_client(tiny_server).chat.completions.create(
        model="tiny-a", messages=HELLO, max_tokens=LONG, logit_bias=NO_EOS, stream=True
    )
    with stream, pytest.raises(openai.APIError) as failure:
        for i, _ in enumerate(stream):
            if i == 3:
                os.kill(worker, signal.SIGKILL)
    assert "worker" in str(failure.value.message)
    # Not ready until the model is loaded again; the next request reloads it.
    assert httpx.get(tiny_server.base_url + "/ready").status_code == 503
    reply = make_client(tiny_server).chat.completions.create(
        model="tiny-a", messages=HELLO, max_tokens=4
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert worker_of(tiny_server) != worker
    assert httpx.get(tiny_server.base_url + "/ready").status_code == 200


def test_killed_worker_fails_a_non_streaming_request_with_503(tiny_server, make_client):
    worker = worker_of(tiny_server)
    timer = threading.Timer(0.5, os.kill, args=(worker, signal.SIGKILL))
    timer.start()
    with pytest.raises(openai.InternalServerError) as failure:
        make_client(tiny_server).chat.completions.create(
            model="tiny-a", messages=HELLO, max_tokens=LONG, logit_bias=NO_EOS
        )
    timer.join()
    assert failure.value.status_code == 503
    assert failure.value.code == "model_unavailable"
    assert failure.value.response.headers["retry-after"] == "1"
    reply = make_client(tiny_server).completions.create(model="tiny-a", prompt="x", max_tokens=3)
    assert reply.choices[0].text is not None
