"""GET /metrics of a real server after real traffic."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.support.server import GatewayServer

HELLO = [{"role": "user", "content": "hi"}]


def value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_requests_tokens_denials_and_loads(tiny_models_dir, tmp_path, make_client):
    server = GatewayServer(tiny_models_dir, tmp_path, default_model="tiny-a")
    try:
        key = server.create_key("metered", models=("tiny-a",))
        sdk = make_client(server)
        reply = sdk.chat.completions.create(model="tiny-a", messages=HELLO, max_tokens=4)
        with (
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as narrow,
            pytest.raises(openai.PermissionDeniedError),
        ):
            narrow.chat.completions.create(model="tiny-b", messages=HELLO, max_tokens=2)
        text = httpx.get(server.base_url + "/metrics", headers=server.headers).text
        admin = server.admin_key.split("-")[1]
        labels = f'key="{admin}",model="tiny-a",route="/v1/chat/completions",status="200"'
        assert value(text, f"gateway_requests_total{{{labels}}}") == 1
        assert (
            value(text, f'gateway_completion_tokens_total{{key="{admin}",model="tiny-a"}}')
            == reply.usage.completion_tokens
        )
        assert value(text, 'gateway_policy_denials_total{reason="model_not_allowed"}') == 1
        assert value(text, 'gateway_model_loads_total{model="tiny-a",result="ok"}') == 1
        assert value(text, "gateway_models_loaded") == 1
        assert value(text, 'gateway_time_to_first_token_seconds_count{model="tiny-a"}') == 1
        assert server.admin_key not in text and key not in text
    finally:
        server.stop()


def test_metrics_token_or_an_admin_key_opens_the_endpoint(tiny_models_dir, tmp_path):
    server = GatewayServer(
        tiny_models_dir,
        tmp_path,
        default_model="tiny-a",
        env={"GATEWAY_SERVER_METRICS_TOKEN": "scrape-secret-123"},
    )
    try:
        url = server.base_url + "/metrics"
        member = server.create_key("member", scopes=("infer", "load", "download"))
        refused = {
            "no credential": ({}, 401),
            "a wrong token": ({"Authorization": "Bearer nope"}, 401),
            "a forged key": ({"Authorization": "Bearer gw-00000000-" + "x" * 43}, 401),
            "a member key": ({"Authorization": f"Bearer {member}"}, 403),
            "a member key as x-api-key": ({"x-api-key": member}, 403),
        }
        for what, (headers, status) in refused.items():
            response = httpx.get(url, headers=headers)
            assert response.status_code == status, what
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, what
            assert "gateway_requests_total" not in response.text, what
        for headers in (
            {"Authorization": "Bearer scrape-secret-123"},
            server.headers,
            {"x-api-key": server.admin_key},
        ):
            response = httpx.get(url, headers=headers)
            assert response.status_code == 200 and "gateway_models_loaded" in response.text
    finally:
        server.stop()


def test_metrics_public_serves_anyone(tiny_models_dir, tmp_path):
    server = GatewayServer(
        tiny_models_dir,
        tmp_path,
        default_model="tiny-a",
        env={"GATEWAY_SERVER_METRICS_PUBLIC": "true"},
    )
    try:
        response = httpx.get(server.base_url + "/metrics")
        assert response.status_code == 200 and "gateway_models_loaded" in response.text
    finally:
        server.stop()


def test_structured_log_has_a_json_line_per_request_and_lifecycle_event(tiny_models_dir, tmp_path):
    import json

    server = GatewayServer(tiny_models_dir, tmp_path, default_model="tiny-a")
    try:
        httpx.post(
            server.base_url + "/v1/chat/completions",
            json={"model": "tiny-a", "messages": HELLO, "max_tokens": 3},
            headers=server.headers,
        )
        httpx.post(
            server.base_url + "/v1/chat/completions",
            json={"model": "tiny-a", "messages": HELLO},
            headers={"Authorization": "Bearer gw-00000000-forged"},
        )
        lines = [line for line in server.log_tail(400).splitlines() if line.startswith("{")]
    finally:
        server.stop()
    events = [json.loads(line) for line in lines]
    requests = [e for e in events if e["event"] == "request"]
    ok = next(e for e in requests if e["status"] == 200)
    assert ok["model"] == "tiny-a" and ok["completion_tokens"] >= 1
    assert ok["key"] == server.admin_key.split("-")[1]
    denied = next(e for e in requests if e["status"] == 401)
    assert denied["denial"] == "invalid_api_key"
    assert any(e["event"] == "load" and e["model"] == "tiny-a" for e in events)
    assert server.admin_key not in "\n".join(lines) and "forged" not in "\n".join(lines)
