"""Keys and policies through the real server and the OpenAI SDK.

Every refusal is checked for its status, its error shape and for having had no
side effect: nothing loaded, nothing charged, nothing written.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest

from policies.principal import Limits
from tests.support.server import GatewayServer

HELLO = [{"role": "user", "content": "hello"}]
NO_EOS = {"2": -100}


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory):
    server = GatewayServer(
        tiny_models_dir,
        tmp_path_factory.mktemp("policy-data"),
        default_model="tiny-a",
        env={"GATEWAY_ENGINE_MIN_RESIDENCY": "0"},
    )
    yield server
    server.stop()


def client(server: GatewayServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)


def usage_rows(server: GatewayServer, key_id: str) -> list[dict]:
    with server.accounts() as store:
        return store.usage_summary(key_id=key_id)


def key_id(key: str) -> str:
    return key.split("-")[1]


def chat(server, key, model="tiny-a", **extra):
    with client(server, key) as sdk:
        return sdk.chat.completions.create(
            model=model, messages=HELLO, max_tokens=extra.pop("max_tokens", 3), **extra
        )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer gw-00000000-not-a-real-secret-at-all-xxxxxxxxxxxxxxx"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"x-api-key": "sk-something-else"},
        {"Authorization": "Bearer a.b.c"},
    ],
    ids=["no key", "unknown gateway key", "basic auth", "foreign key", "jwt when not configured"],
)
def test_requests_without_a_valid_key_get_401_in_openai_shape(server, headers):
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "tiny-a", "messages": HELLO},
        headers=headers,
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    for value in headers.values():
        assert value.split()[-1] not in response.text  # never echoes the credential


def test_both_header_styles_authenticate(server):
    key = server.create_key("both-styles")
    for headers in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}):
        response = httpx.get(server.base_url + "/v1/models", headers=headers)
        assert response.status_code == 200


def test_health_and_ready_need_no_key(server):
    assert httpx.get(server.base_url + "/health").status_code == 200
    assert httpx.get(server.base_url + "/ready").status_code == 200


def test_revoked_key_is_refused_at_once(server):
    key = server.create_key("to-revoke")
    assert chat(server, key).choices
    revoke = httpx.post(
        f"{server.base_url}/admin/keys/{key_id(key)}/revoke", headers=server.headers
    )
    assert revoke.status_code == 200 and revoke.json()["revoked_at"]
    with pytest.raises(openai.AuthenticationError):
        chat(server, key)


def test_allowlist_hides_and_refuses_other_models(server):
    key = server.create_key("only-b", models=("tiny-b",), scopes=("infer", "load"))
    with client(server, key) as sdk:
        assert [m.id for m in sdk.models.list().data] == ["tiny-b"]
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve("tiny-a")
        with pytest.raises(openai.PermissionDeniedError) as refused:
            sdk.chat.completions.create(model="tiny-a", messages=HELLO, max_tokens=2)
    assert refused.value.code == "model_not_allowed"
    assert usage_rows(server, key_id(key)) == []


def test_key_without_load_scope_cannot_load_and_nothing_loads(server):
    server_admin = server.headers
    httpx.post(f"{server.base_url}/admin/models/tiny-b/unload", headers=server_admin)
    deadline = time.monotonic() + 30
    while server.model("tiny-b")["state"] != "absent":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    key = server.create_key("infer-only", scopes=("infer",))
    loads_before = server.model("tiny-b")["loads"]
    assert chat(server, key, model="tiny-a").choices  # loaded: fine
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(server, key, model="tiny-b")
    assert refused.value.code == "missing_scope"
    assert "load" in refused.value.message
    assert server.model("tiny-b")["state"] == "absent"
    assert server.model("tiny-b")["loads"] == loads_before


def test_requests_per_minute_answers_429_with_the_real_wait_and_headers(server):
    key = server.create_key("rpm-2", limits=Limits(requests_per_minute=2))
    chat(server, key)
    chat(server, key)
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "tiny-a", "messages": HELLO, "max_tokens": 2},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["x-ratelimit-limit-requests"] == "2"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-reset-requests" in response.headers
    rows = usage_rows(server, key_id(key))
    assert rows[0]["requests"] == 2  # the refused one was not recorded or charged


def test_exhausted_daily_tokens_answer_403_with_reset_and_survive_a_restart(
    tiny_models_dir, tmp_path_factory
):
    data = tmp_path_factory.mktemp("quota-data")
    first = GatewayServer(tiny_models_dir, data, default_model="tiny-a")
    try:
        key = first.create_key("daily", limits=Limits(tokens_per_day=40))
        reply = chat(first, key, max_tokens=30, logit_bias=NO_EOS)
        # The reservation lowered max_tokens to what the day had left: the quota is
        # used up exactly, never overshot.
        assert reply.usage.total_tokens == 40
        assert reply.choices[0].finish_reason == "length"
        with pytest.raises(openai.PermissionDeniedError) as exhausted:
            chat(first, key)
        assert exhausted.value.code == "quota_exhausted"
        assert "resets at" in exhausted.value.message
    finally:
        first.stop()
    again = GatewayServer(tiny_models_dir, data, default_model="tiny-a")
    try:
        with pytest.raises(openai.PermissionDeniedError):
            chat(again, key)
    finally:
        again.stop()


def test_usage_is_recorded_with_the_real_counts_streamed_or_not(server):
    key = server.create_key("counted")
    plain = chat(server, key, max_tokens=5)
    with client(server, key) as sdk:
        streamed = sdk.chat.completions.create(
            model="tiny-a",
            messages=HELLO,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [c.usage for c in streamed if c.usage][0]
    (row,) = usage_rows(server, key_id(key))
    assert row["requests"] == 2
    assert row["prompt_tokens"] == plain.usage.prompt_tokens + usage.prompt_tokens
    assert row["completion_tokens"] == plain.usage.completion_tokens + usage.completion_tokens


def concurrency_slot_is_free(server: GatewayServer, key: str) -> bool:
    try:
        chat(server, key, max_tokens=1)
        return True
    except openai.RateLimitError:
        return False


def long_stream(server: GatewayServer, key: str):
    sdk = client(server, key)
    stream = sdk.chat.completions.create(
        model="tiny-a", messages=HELLO, max_tokens=1900, logit_bias=NO_EOS, stream=True
    )
    return sdk, stream


def test_concurrency_limit_and_slot_released_on_completion(server):
    key = server.create_key("one-at-a-time", limits=Limits(max_concurrent=1))
    sdk, stream = long_stream(server, key)
    with sdk, stream:
        next(iter(stream))
        with pytest.raises(openai.RateLimitError) as busy:
            chat(server, key)
        assert busy.value.code == "rate_limit_exceeded"
        assert int(busy.value.response.headers["retry-after"]) >= 1
        for _ in stream:
            pass
    assert concurrency_slot_is_free(server, key)


def test_concurrency_slot_released_when_the_client_disconnects(server):
    key = server.create_key("disconnects", limits=Limits(max_concurrent=1))
    sdk, stream = long_stream(server, key)
    with sdk, stream:
        for i, _ in enumerate(stream):
            if i == 3:
                break
    deadline = time.monotonic() + 10
    while not concurrency_slot_is_free(server, key):
        assert time.monotonic() < deadline, "slot leaked after a disconnect"
        time.sleep(0.2)
    (row,) = usage_rows(server, key_id(key))[:1]
    assert row["completion_tokens"] >= 3  # a disconnect charges what was generated


def test_concurrency_slot_released_when_the_worker_dies(server):
    key = server.create_key("crashes", scopes=("infer",), limits=Limits(max_concurrent=1))
    sdk, stream = long_stream(server, key)
    with sdk, stream, pytest.raises(openai.APIError):
        for i, _ in enumerate(stream):
            if i == 3:
                os.kill(server.model("tiny-a")["pid"], signal.SIGKILL)
    # Recovery after a crash is not a load the caller chose: infer scope suffices.
    assert concurrency_slot_is_free(server, key)


def test_concurrency_slot_released_after_a_load_wait_times_out(tiny_models_dir, tmp_path_factory):
    server = GatewayServer(
        tiny_models_dir,
        tmp_path_factory.mktemp("timeout-data"),
        default_model="tiny-a",
        env={"GATEWAY_ENGINE_LOAD_WAIT": "0.001", "GATEWAY_ENGINE_SPARE_WORKER": "false"},
    )
    try:
        key = server.create_key("waits", scopes=("infer", "load"), limits=Limits(max_concurrent=1))
        with pytest.raises(openai.InternalServerError):
            chat(server, key, model="tiny-b")
        deadline = time.monotonic() + 30
        while server.model("tiny-b")["state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert concurrency_slot_is_free(server, key)
    finally:
        server.stop()


def test_admin_routes_need_the_admin_scope(server):
    key = server.create_key("not-admin", scopes=("infer", "load", "download"))
    for method, path in [
        ("GET", "/admin/models"),
        ("POST", "/admin/models/tiny-a/unload"),
        ("GET", "/admin/keys"),
        ("GET", "/admin/usage"),
    ]:
        response = httpx.request(
            method, server.base_url + path, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "missing_scope"
    assert server.model("tiny-a")["state"] in ("ready", "loading")


def test_admin_key_api_creates_lists_updates_and_shows_usage(server):
    created = httpx.post(
        server.base_url + "/admin/keys",
        json={"name": "api-made", "scopes": ["infer"], "limits": {"requests_per_minute": 5}},
        headers=server.headers,
    )
    assert created.status_code == 201
    body = created.json()
    key = body.pop("key")
    assert body["limits"]["requests_per_minute"] == 5
    chat(server, key)
    listing = httpx.get(server.base_url + "/admin/keys", headers=server.headers)
    assert key not in listing.text and "secret" not in listing.text
    assert body["id"] in {k["id"] for k in listing.json()["data"]}
    updated = httpx.patch(
        f"{server.base_url}/admin/keys/{body['id']}",
        json={"limits": {"requests_per_minute": 1}},
        headers=server.headers,
    )
    assert updated.json()["limits"]["requests_per_minute"] == 1
    shown = httpx.get(f"{server.base_url}/admin/keys/{body['id']}", headers=server.headers)
    assert shown.json()["usage"][0]["requests"] == 1
    bad = httpx.post(
        server.base_url + "/admin/keys",
        json={"name": "x", "scopes": ["root"]},
        headers=server.headers,
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "scopes"


def test_parallel_bursts_never_exceed_the_concurrency_limit(server):
    key = server.create_key("burst", limits=Limits(max_concurrent=2))
    outcomes: list[str] = []

    def one() -> None:
        try:
            chat(server, key, max_tokens=40, logit_bias=NO_EOS)
            outcomes.append("ok")
        except openai.RateLimitError:
            outcomes.append("429")

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes.count("ok") >= 2 and len(outcomes) == 6
    assert concurrency_slot_is_free(server, key)
