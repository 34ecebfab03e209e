"""Every bad request gets the right status and OpenAI's error shape, never a 5xx."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
HELLO = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return json.dumps({"model": "tiny-a", "messages": HELLO, **fields})


BAD_REQUESTS = [
    # (name, method, path, body, status, code, param)
    (
        "malformed json",
        "POST",
        CHAT,
        b'{"model": "tiny-a", "messages": [',
        400,
        "invalid_json",
        None,
    ),
    ("body not an object", "POST", CHAT, b"[]", 400, "invalid_request", None),
    (
        "missing model",
        "POST",
        CHAT,
        json.dumps({"messages": HELLO}),
        400,
        "invalid_request",
        "model",
    ),
    (
        "missing messages",
        "POST",
        CHAT,
        json.dumps({"model": "tiny-a"}),
        400,
        "invalid_request",
        "messages",
    ),
    ("empty messages", "POST", CHAT, chat(messages=[]), 400, "invalid_request", "messages"),
    (
        "message without role",
        "POST",
        CHAT,
        chat(messages=[{"content": "x"}]),
        400,
        "invalid_request",
        "messages[0].role",
    ),
    (
        "unknown role",
        "POST",
        CHAT,
        chat(messages=[{"role": "wizard", "content": "x"}]),
        400,
        "invalid_request",
        "messages[0].role",
    ),
    (
        "image content",
        "POST",
        CHAT,
        chat(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        ),
        400,
        "invalid_request",
        "messages[0].content[0].type",
    ),
    (
        "max_tokens wrong type",
        "POST",
        CHAT,
        chat(max_tokens="ten"),
        400,
        "invalid_request",
        "max_tokens",
    ),
    ("max_tokens zero", "POST", CHAT, chat(max_tokens=0), 400, "invalid_request", "max_tokens"),
    (
        "max_tokens negative",
        "POST",
        CHAT,
        chat(max_tokens=-5),
        400,
        "invalid_request",
        "max_tokens",
    ),
    (
        "max_completion_tokens zero",
        "POST",
        CHAT,
        chat(max_completion_tokens=0),
        400,
        "invalid_request",
        "max_completion_tokens",
    ),
    (
        "temperature too high",
        "POST",
        CHAT,
        chat(temperature=3),
        400,
        "invalid_request",
        "temperature",
    ),
    (
        "temperature negative",
        "POST",
        CHAT,
        chat(temperature=-0.1),
        400,
        "invalid_request",
        "temperature",
    ),
    ("top_p above one", "POST", CHAT, chat(top_p=1.5), 400, "invalid_request", "top_p"),
    ("n zero", "POST", CHAT, chat(n=0), 400, "invalid_request", "n"),
    ("n too many", "POST", CHAT, chat(n=50), 400, "invalid_request", "n"),
    (
        "five stop strings",
        "POST",
        CHAT,
        chat(stop=["a", "b", "c", "d", "e"]),
        400,
        "invalid_request",
        "stop",
    ),
    (
        "penalty out of range",
        "POST",
        CHAT,
        chat(presence_penalty=5),
        400,
        "invalid_request",
        "presence_penalty",
    ),
    (
        "logit_bias key not a token id",
        "POST",
        CHAT,
        chat(logit_bias={"hello": 1}),
        400,
        "invalid_request",
        "logit_bias",
    ),
    (
        "logit_bias value out of range",
        "POST",
        CHAT,
        chat(logit_bias={"5": 500}),
        400,
        "invalid_request",
        "logit_bias",
    ),
    (
        "logit_bias token outside vocabulary",
        "POST",
        CHAT,
        chat(logit_bias={"999999": 1}),
        400,
        "invalid_request",
        None,
    ),
    ("stream not a bool", "POST", CHAT, chat(stream="yes"), 400, "invalid_request", "stream"),
    (
        "tools on a model without tool support",
        "POST",
        CHAT,
        chat(tools=[{"type": "function", "function": {"name": "f"}}]),
        400,
        "tools_not_supported",
        "tools",
    ),
    (
        "top_logprobs over 20",
        "POST",
        CHAT,
        chat(logprobs=True, top_logprobs=21),
        400,
        "invalid_request",
        "top_logprobs",
    ),
    (
        "model name malformed",
        "POST",
        CHAT,
        chat(model="../../etc/passwd"),
        400,
        "invalid_request",
        "model",
    ),
    ("model name empty", "POST", CHAT, chat(model=""), 400, "invalid_request", "model"),
    ("unknown model", "POST", CHAT, chat(model="no-such-model"), 404, "model_not_found", "model"),
    (
        "prompt beyond context",
        "POST",
        CHAT,
        chat(messages=[{"role": "user", "content": "word " * 1500}], max_tokens=1000),
        400,
        "context_length_exceeded",
        "messages",
    ),
    (
        "completion prompt missing",
        "POST",
        TEXT,
        json.dumps({"model": "tiny-a"}),
        400,
        "invalid_request",
        "prompt",
    ),
    (
        "completion prompt token ids",
        "POST",
        TEXT,
        json.dumps({"model": "tiny-a", "prompt[0]": [1, 2, 3]}),
        400,
        "invalid_request",
        "prompt",
    ),
    (
        "completion empty prompt",
        "POST",
        TEXT,
        json.dumps({"model": "tiny-a", "prompt": ""}),
        400,
        "invalid_request",
        "prompt",
    ),
    (
        "completion suffix unsupported",
        "POST",
        TEXT,
        json.dumps({"model": "tiny-a", "prompt": "x", "suffix": "y"}),
        400,
        "invalid_request",
        "suffix",
    ),
    (
        "completion unknown model",
        "POST",
        TEXT,
        json.dumps({"model": "ghost", "prompt": "x"}),
        404,
        "model_not_found",
        "model",
    ),
    ("unknown model card", "GET", "/v1/models/ghost", None, 404, "model_not_found", "model"),
    ("unknown route", "GET", "/v1/nothing-here", None, 404, "not_found", None),
    ("wrong method", "GET", CHAT, None, 405, "method_not_allowed", None),
    (
        "body over the size limit",
        "POST",
        CHAT,
        chat(messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}]),
        413,
        "request_too_large",
        None,
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "param"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request_gets_openai_error_shape_and_right_status(
    tiny_server, method, path, body, status, code, param
):
    response = httpx.request(
        method,
        tiny_server.base_url + path,
        content=body,
        headers={"content-type": "application/json", **tiny_server.headers},
        timeout=60,
    )
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def test_bad_requests_leave_the_server_serving(tiny_server, make_client):
    client = make_client(tiny_server)
    reply = client.chat.completions.create(model="tiny-a", messages=HELLO, max_tokens=3)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_sdk_raises_matching_exception_classes(tiny_server, make_client):
    client = make_client(tiny_server)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="ghost", messages=HELLO)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-a", messages=HELLO, temperature=9)
    assert bad.value.param == "temperature"
