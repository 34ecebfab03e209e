"""The admission pipeline under attack by a hostile key holder on the same box.

Token limits are reservations that concurrency cannot overshoot; count_tokens
is a request like any other; hostile values end cleanly and release what the
request held; a prompt that cannot fit is refused before a worker sees it;
no request can wait forever.  Each test asserts what did not happen.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from policies.principal import Limits
from tests.support.server import GatewayServer

HELLO = [{"role": "user", "content": "hi"}]
NO_EOS = {"2": -100}


def aliased(data, target: str) -> dict[str, str]:
    """The environment of a server whose ``claude-*`` names resolve to ``target``."""
    data.mkdir(parents=True, exist_ok=True)
    config = data / "gateway.toml"
    config.write_text(f'[models]\naliases = {{ "claude-*" = "{target}" }}\n')
    return {"GATEWAY_CONFIG": str(config)}


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("admission-data")
    server = GatewayServer(
        tiny_models_dir, data, default_model="tiny-a", env=aliased(data, "tiny-a")
    )
    yield server
    server.stop()


def post(server, key, body, path="/v1/chat/completions", timeout=120.0) -> httpx.Response:
    return httpx.post(
        server.base_url + path,
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=timeout,
    )


def chat(server, key, **extra) -> httpx.Response:
    return post(server, key, {"model": "tiny-a", "messages": HELLO, **extra})


def concurrently(count: int, call) -> list[httpx.Response]:
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        response = call()
        with lock:
            results.append(response)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(results) == count
    return results


def usage_of(server, key) -> dict:
    with server.accounts() as store:
        rows = store.usage_summary(key_id=key.split("-")[1])
    return {
        "requests": sum(r["requests"] for r in rows),
        "tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows),
    }


@pytest.mark.parametrize(
    ("limits", "ceiling"),
    [(Limits(tokens_per_minute=100), 100), (Limits(tokens_per_day=50), 50)],
    ids=["per-minute", "per-day"],
)
def test_eight_concurrent_requests_cannot_overshoot_a_token_limit(server, limits, ceiling):
    key = server.create_key("burst", limits=limits)
    results = concurrently(8, lambda: chat(server, key, max_tokens=64, logit_bias=NO_EOS))
    served = [r.json()["usage"]["total_tokens"] for r in results if r.status_code == 200]
    assert served, [r.text for r in results]
    assert sum(served) <= ceiling
    assert {r.status_code for r in results} <= {200, 403, 429}
    assert usage_of(server, key)["tokens"] <= ceiling


def test_count_tokens_is_rate_limited_and_recorded(server):
    key = server.create_key("counter", limits=Limits(requests_per_minute=1))
    body = {"model": "claude-3-5-haiku-latest", "messages": HELLO}
    path = "/v1/messages/count_tokens"
    first = post(server, key, body, path)
    assert first.status_code == 200 and first.json()["input_tokens"] > 0
    for _ in range(5):
        again = post(server, key, body, path)
        assert again.status_code == 429
        assert again.json()["error"]["type"] == "rate_limit_error"
        assert int(again.headers["retry-after"]) >= 1
    assert usage_of(server, key)["requests"] == 1


def test_concurrent_first_count_tokens_calls_all_succeed(tiny_models_dir, tmp_path):
    fresh = GatewayServer(
        tiny_models_dir,
        tmp_path,
        default_model="tiny-a",
        env=aliased(tmp_path, "tiny-b"),
    )
    try:
        body = {"model": "claude-x", "messages": HELLO}
        results = concurrently(
            4, lambda: post(fresh, fresh.admin_key, body, "/v1/messages/count_tokens")
        )
        assert [r.status_code for r in results] == [200] * 4, [r.text for r in results]
        assert len({r.json()["input_tokens"] for r in results}) == 1
    finally:
        fresh.stop()


@pytest.mark.parametrize(
    "bias",
    [
        {str(2**64): 1},  # used to hang forever and leak the key's slot
        {"²": 1},  # passes str.isdigit()
        {"١٢": 1},  # Arabic-Indic digits
        {"-1": 1},
        {"99999999": 1},  # a token id, but outside the vocabulary
        {" 5": 1},
    ],
    ids=["2^64", "superscript-two", "arabic-digits", "negative", "outside-vocabulary", "space"],
)
def test_hostile_logit_bias_is_400_and_releases_the_slot(server, bias):
    key = server.create_key("biased", limits=Limits(max_concurrent=1))
    refused = chat(server, key, max_tokens=2, logit_bias=bias)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "logit_bias" or "logit_bias" in refused.text
    assert chat(server, key, max_tokens=2).status_code == 200  # the slot came back


def test_prompt_that_cannot_fit_is_refused_without_stalling_a_neighbour(server):
    neighbour = server.create_key("neighbour")
    attacker = server.create_key("attacker")
    gaps: list[float] = []
    done = threading.Event()

    def stream() -> None:
        body = {
            "model": "tiny-a",
            "messages": HELLO,
            "max_tokens": 400,
            "logit_bias": NO_EOS,
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {neighbour}"}
        with httpx.stream(
            "POST", server.base_url + "/v1/chat/completions", json=body, headers=headers
        ) as response:
            last = time.monotonic()
            for _ in response.iter_lines():
                now = time.monotonic()
                gaps.append(now - last)
                last = now
        done.set()

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(0.5)
    huge = "lorem ipsum " * 300_000  # about 3.6 MB, under the 4 MiB body limit
    refused = post(
        server, attacker, {"model": "tiny-a", "messages": [{"role": "user", "content": huge}]}
    )
    assert refused.status_code == 400, refused.text[:300]
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    thread.join(120)
    assert done.is_set()
    # Tokenizing 3.6 MB on the worker's thread stalled this stream for 3-7 s.
    assert max(gaps[1:]) < 1.5, max(gaps[1:])
    assert usage_of(server, attacker)["requests"] == 0


def test_no_request_outlives_the_request_timeout(tiny_models_dir, tmp_path):
    short = GatewayServer(
        tiny_models_dir,
        tmp_path,
        default_model="tiny-a",
        env={"GATEWAY_ENGINE_REQUEST_TIMEOUT": "1.5"},
    )
    try:
        key = short.create_key("slow", limits=Limits(max_concurrent=1))
        long = {"max_tokens": 1900, "logit_bias": NO_EOS}
        started = time.monotonic()
        ended = chat(short, key, **long)
        assert ended.status_code == 504, ended.text
        assert ended.json()["error"]["code"] == "request_timeout"
        assert time.monotonic() - started < 30
        body = {"model": "tiny-a", "messages": HELLO, "stream": True, **long}
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.stream(
            "POST", short.base_url + "/v1/chat/completions", json=body, headers=headers
        ) as response:
            lines = [line for line in response.iter_lines() if line]
        assert "request_timeout" in lines[-1]
        assert chat(short, key, max_tokens=2).status_code == 200  # the slot came back
    finally:
        short.stop()
