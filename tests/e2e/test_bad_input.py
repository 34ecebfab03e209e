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


# --- Ollama's API: every error is exactly {"error": "<message>"} --------------------

OCHAT = "/api/chat"
OGEN = "/api/generate"
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def ochat(**fields):
    return json.dumps({"model": "tiny-a", "messages": HELLO, **fields})


def ogen(**fields):
    return json.dumps({"model": "tiny-a", "prompt": "hi", **fields})


def options(**values):
    return ochat(options=values)


OLLAMA_BAD_REQUESTS = [
    # (name, method, path, body, status, a word the message must contain, or None)
    ("malformed json", "POST", OCHAT, b'{"model": "tiny-a", "messages": [', 400, None),
    ("generate malformed json", "POST", OGEN, b'{"model": ', 400, None),
    ("body not an object", "POST", OCHAT, b"[]", 400, None),
    ("generate body not an object", "POST", OGEN, b'"hi"', 400, None),
    ("missing model", "POST", OCHAT, json.dumps({"messages": HELLO}), 400, "model"),
    ("generate missing model", "POST", OGEN, json.dumps({"prompt": "hi"}), 400, "model"),
    ("model not a string", "POST", OCHAT, ochat(model=5), 400, "model"),
    ("model name malformed", "POST", OCHAT, ochat(model="../../etc/passwd"), 400, "model"),
    ("model name empty", "POST", OCHAT, ochat(model=""), 400, "model"),
    ("unknown model", "POST", OCHAT, ochat(model="no-such-model"), 404, "model"),
    ("generate unknown model", "POST", OGEN, ogen(model="no-such-model:7b"), 404, "model"),
    ("temperature 9", "POST", OCHAT, options(temperature=9), 400, "temperature"),
    ("top_p 2", "POST", OCHAT, options(top_p=2), 400, "top_p"),
    ("top_k negative", "POST", OCHAT, options(top_k=-1), 400, "top_k"),
    ("repeat_penalty 0", "POST", OCHAT, options(repeat_penalty=0), 400, "repeat_penalty"),
    ("repeat_penalty 5", "POST", OCHAT, options(repeat_penalty=5), 400, "repeat_penalty"),
    ("num_ctx 0", "POST", OCHAT, options(num_ctx=0), 400, "num_ctx"),
    ("options not an object", "POST", OCHAT, ochat(options=[1]), 400, "options"),
    ("mirostat unsupported", "POST", OCHAT, options(mirostat=2), 400, "mirostat"),
    ("min_p unsupported", "POST", OCHAT, options(min_p=0.3), 400, "min_p"),
    ("typical_p unsupported", "POST", OCHAT, options(typical_p=0.5), 400, "typical_p"),
    ("tfs_z unsupported", "POST", OGEN, ogen(options={"tfs_z": 0.5}), 400, "tfs_z"),
    ("keep_alive a word", "POST", OCHAT, ochat(keep_alive="soon"), 400, "keep_alive"),
    ("keep_alive a bad unit", "POST", OCHAT, ochat(keep_alive="5x"), 400, "keep_alive"),
    ("keep_alive a list", "POST", OCHAT, ochat(keep_alive=[]), 400, "keep_alive"),
    ("generate keep_alive a word", "POST", OGEN, ogen(keep_alive="later"), 400, "keep_alive"),
    ("format xml", "POST", OCHAT, ochat(format="xml"), 400, "format"),
    ("format schema not an object", "POST", OCHAT, ochat(format=[1]), 400, "format"),
    (
        "format schema uncompilable",
        "POST",
        OCHAT,
        ochat(format={"$ref": "#/definitions/nope"}),
        400,
        "format",
    ),
    (
        "generate format schema uncompilable",
        "POST",
        OGEN,
        ogen(format={"type": "object", "if": {}}),
        400,
        "format",
    ),
    ("format with tools", "POST", OCHAT, ochat(format="json", tools=[TOOL]), 400, "format"),
    ("top_logprobs without logprobs", "POST", OCHAT, ochat(top_logprobs=2), 400, "top_logprobs"),
    (
        "top_logprobs 99",
        "POST",
        OCHAT,
        ochat(logprobs=True, top_logprobs=99),
        400,
        "top_logprobs",
    ),
    (
        "unknown role",
        "POST",
        OCHAT,
        ochat(messages=[{"role": "wizard", "content": "x"}]),
        400,
        "role",
    ),
    ("message without role", "POST", OCHAT, ochat(messages=[{"content": "x"}]), 400, "role"),
    ("messages not a list", "POST", OCHAT, ochat(messages="hi"), 400, "messages"),
    (
        "user message with tool_calls",
        "POST",
        OCHAT,
        ochat(
            messages=[{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}]
        ),
        400,
        "tool_calls",
    ),
    (
        "images on a chat message",
        "POST",
        OCHAT,
        ochat(messages=[{"role": "user", "content": "what is this?", "images": ["aGk="]}]),
        400,
        "images",
    ),
    ("images on generate", "POST", OGEN, ogen(images=["aGk="]), 400, "images"),
    ("generate suffix", "POST", OGEN, ogen(suffix="}"), 400, "suffix"),
    ("generate template", "POST", OGEN, ogen(template="{{ .Prompt }}"), 400, "template"),
    ("generate context", "POST", OGEN, ogen(context=[1, 2, 3]), 400, "context"),
    ("generate raw with system", "POST", OGEN, ogen(raw=True, system="terse"), 400, "system"),
    ("stream not a bool", "POST", OCHAT, ochat(stream="yes"), 400, "stream"),
    ("generate stream not a bool", "POST", OGEN, ogen(stream="yes"), 400, "stream"),
    (
        "tool with a bad function name",
        "POST",
        OCHAT,
        ochat(tools=[{"type": "function", "function": {"name": "rm -rf"}}]),
        400,
        "tools",
    ),
    ("two tools with one name", "POST", OCHAT, ochat(tools=[TOOL, TOOL]), 400, "tools"),
    (
        "prompt beyond the model's context",
        "POST",
        OCHAT,
        ochat(messages=[{"role": "user", "content": "word " * 8000}]),
        400,
        "context",
    ),
    (
        "generate prompt beyond the model's context",
        "POST",
        OGEN,
        ogen(prompt="word " * 8000),
        400,
        "context",
    ),
    ("prompt beyond num_ctx", "POST", OCHAT, options(num_ctx=8), 400, "context"),
    (
        "body over the size limit",
        "POST",
        OCHAT,
        ochat(messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}]),
        413,
        None,
    ),
    ("show without model", "POST", "/api/show", b"{}", 400, "model"),
    ("show model not a string", "POST", "/api/show", json.dumps({"model": 5}), 400, "model"),
    ("show unknown model", "POST", "/api/show", json.dumps({"model": "ghost"}), 404, "model"),
    ("pull without model", "POST", "/api/pull", b"{}", 400, "model"),
    ("pull malformed json", "POST", "/api/pull", b"{", 400, None),
    ("delete without model", "DELETE", "/api/delete", b"{}", 400, "model"),
    (
        "delete unknown model",
        "DELETE",
        "/api/delete",
        json.dumps({"model": "ghost"}),
        404,
        "model",
    ),
]


def assert_ollama_error(response: httpx.Response, status: int) -> str:
    """The response is Ollama's error: exactly ``{"error": "<message>"}``; its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"error"}, payload
    assert isinstance(payload["error"], str) and payload["error"], payload
    return payload["error"]


# Known gateway bugs: the test says what should happen; strict, so a fix shows up.
@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in OLLAMA_BAD_REQUESTS],
)
def test_bad_ollama_request_gets_ollamas_error_shape_and_right_status(
    tiny_server, method, path, body, status, field
):
    response = httpx.request(
        method,
        tiny_server.base_url + path,
        content=body,
        headers={"content-type": "application/json", **tiny_server.headers},
        timeout=60,
    )
    assert response.status_code < 500, response.text
    message = assert_ollama_error(response, status)
    if field is not None:
        assert field.lower() in message.lower(), message


OLLAMA_UNSUPPORTED = [
    ("POST", "/api/create", {"model": "mine", "from": "tiny-a"}),
    ("POST", "/api/push", {"model": "tiny-a"}),
    ("POST", "/api/copy", {"source": "tiny-a", "destination": "mine"}),
    ("POST", "/api/embed", {"model": "tiny-a", "input": "hi"}),
    ("POST", "/api/embeddings", {"model": "tiny-a", "prompt": "hi"}),
    ("POST", "/api/blobs/sha256:" + "0" * 64, None),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    OLLAMA_UNSUPPORTED,
    ids=[f"{m} {p}" for m, p, _ in OLLAMA_UNSUPPORTED],
)
def test_ollamas_unsupported_routes_answer_501_in_ollamas_shape(tiny_server, method, path, body):
    response = httpx.request(
        method,
        tiny_server.base_url + path,
        json=body,
        headers=tiny_server.headers,
        timeout=60,
    )
    if method == "HEAD":  # no body: the status is all a HEAD can say
        assert response.status_code == 501, response.headers
        assert not response.content
    else:
        assert_ollama_error(response, 501)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/nothing", 404),
        ("POST", "/api/nothing", 404),
        ("GET", "/api/chat", 405),
        ("GET", "/api/generate", 405),
        ("POST", "/api/tags", 405),
        ("GET", "/api/show", 405),
        ("POST", "/api/delete", 405),
    ],
)
def test_unknown_ollama_routes_and_wrong_methods_answer_in_ollamas_shape(
    tiny_server, method, path, status
):
    response = httpx.request(
        method, tiny_server.base_url + path, json={}, headers=tiny_server.headers, timeout=60
    )
    assert_ollama_error(response, status)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", OCHAT, {"model": "tiny-a", "messages": HELLO}),
        ("POST", OGEN, {"model": "tiny-a", "prompt": "hi"}),
        ("GET", "/api/tags", None),
        ("GET", "/api/ps", None),
        ("POST", "/api/show", {"model": "tiny-a"}),
        ("POST", "/api/pull", {"model": "tiny-a"}),
        ("DELETE", "/api/delete", {"model": "tiny-a"}),
        ("GET", "/api/version", None),
        *OLLAMA_UNSUPPORTED,
    ],
)
@pytest.mark.parametrize("key", ["none", "wrong"])
def test_ollama_routes_reveal_nothing_without_a_valid_key(tiny_server, method, path, body, key):
    headers = {"Authorization": "Bearer gw-00000000-wrong"} if key == "wrong" else {}
    response = httpx.request(
        method, tiny_server.base_url + path, json=body, headers=headers, timeout=60
    )
    if method == "HEAD":
        assert response.status_code == 401, response.headers
    else:
        assert_ollama_error(response, 401)


def test_a_nan_keep_alive_is_refused_by_name(tiny_server):
    url = tiny_server.base_url
    body = {"model": "tiny-a", "messages": HELLO, "stream": False, "options": {"num_predict": 1}}
    try:
        response = httpx.post(
            url + OCHAT, json=body | {"keep_alive": "nan"}, headers=tiny_server.headers, timeout=60
        )
        listed = httpx.get(url + "/api/ps", headers=tiny_server.headers, timeout=60)
        assert listed.status_code == 200, listed.text
        assert "keep_alive" in assert_ollama_error(response, 400)
    finally:  # whatever happened, give tiny-a back a sane keep_alive
        httpx.post(
            url + OCHAT,
            json={"model": "tiny-a", "keep_alive": "10m", "stream": False},
            headers=tiny_server.headers,
            timeout=60,
        )


@pytest.mark.parametrize("seed", [-1, -(2**63)])
def test_a_negative_seed_is_honoured_or_refused_by_name(tiny_server, seed):
    body = {
        "model": "tiny-a",
        "messages": HELLO,
        "stream": False,
        "options": {"seed": seed, "num_predict": 1},
    }
    response = httpx.post(
        tiny_server.base_url + OCHAT, json=body, headers=tiny_server.headers, timeout=60
    )
    if response.status_code == 200:
        assert response.json()["done"] is True
    else:
        message = assert_ollama_error(response, 400)
        assert "seed" in message and "Error" not in message, message


@pytest.mark.parametrize("seed", [-1, -(2**63), 2**63 - 1])
def test_any_64_bit_seed_reproduces_on_the_openai_api(tiny_server, make_client, seed):
    client = make_client(tiny_server)

    def once() -> str:
        reply = client.chat.completions.create(
            model="tiny-a", messages=HELLO, max_tokens=6, temperature=1.0, seed=seed
        )
        return reply.choices[0].message.content or ""

    assert once() == once()


def test_a_seed_past_a_64_bit_integer_is_refused_by_name(tiny_server):
    response = httpx.post(
        tiny_server.base_url + CHAT,
        json={"model": "tiny-a", "messages": HELLO, "seed": 2**63},
        headers=tiny_server.headers,
        timeout=60,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "seed"
