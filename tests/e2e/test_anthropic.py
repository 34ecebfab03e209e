"""The Anthropic Messages API with the real `anthropic` SDK against the real server."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from policies.principal import Limits
from tests.support.server import GatewayServer

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
ALIAS = "claude-3-5-haiku-latest"


@pytest.fixture(scope="module")
def server(bundled_models_dir, tiny_models_dir, tmp_path_factory):
    models = tmp_path_factory.mktemp("anthropic-models")
    (models / "smollm2-135m-instruct").symlink_to(bundled_models_dir / "smollm2-135m-instruct")
    (models / "tiny-a").symlink_to(tiny_models_dir / "tiny-a")
    data = tmp_path_factory.mktemp("anthropic-data")
    config = data / "gateway.toml"
    config.write_text('[models]\naliases = { "claude-3-5-*" = "default" }\n')
    server = GatewayServer(
        models, data, default_model="smollm2-135m-instruct", env={"GATEWAY_CONFIG": str(config)}
    )
    yield server
    server.stop()


def client(server: GatewayServer, key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.base_url, api_key=key or server.admin_key, max_retries=0
    )


@pytest.fixture(scope="module")
def sdk(server):
    with client(server) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def plain(sdk):
    return sdk.messages.create(
        model=ALIAS, max_tokens=24, extra_body={"temperature": 0}, messages=FRANCE
    )


pytestmark = pytest.mark.realmodel


def test_message_through_a_claude_alias_answers_and_echoes_the_model(plain):
    assert plain.type == "message" and plain.role == "assistant"
    assert plain.model == ALIAS
    assert "Paris" in plain.content[0].text
    assert plain.stop_reason == "end_turn" and plain.stop_sequence is None
    assert plain.usage.input_tokens > 0 and plain.usage.output_tokens > 0


def test_stream_helpers_assemble_the_same_text_and_final_message(sdk, plain):
    with sdk.messages.stream(
        model=ALIAS, max_tokens=24, extra_body={"temperature": 0}, messages=FRANCE
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == plain.content[0].text == final.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == plain.usage.output_tokens

    def prompt(usage):  # Anthropic counts prompt tokens read from the cache apart
        return usage.input_tokens + usage.cache_read_input_tokens

    assert prompt(final.usage) == prompt(plain.usage)
    assert final.usage.cache_read_input_tokens > 0, "the same prompt again hits the cache"


def test_count_tokens_agrees_with_usage_input_tokens(sdk, plain):
    counted = sdk.messages.count_tokens(model=ALIAS, messages=FRANCE)
    usage = plain.usage  # Anthropic counts prompt tokens read from the cache apart
    assert counted.input_tokens == usage.input_tokens + usage.cache_read_input_tokens
    with_system = sdk.messages.count_tokens(model=ALIAS, system="You are terse.", messages=FRANCE)
    reply = sdk.messages.create(
        model=ALIAS,
        max_tokens=2,
        extra_body={"temperature": 0},
        system="You are terse.",
        messages=FRANCE,
    )
    read = reply.usage.cache_read_input_tokens
    assert with_system.input_tokens == reply.usage.input_tokens + read != counted.input_tokens


def test_stop_sequence_is_reported_as_such(sdk, plain):
    full = plain.content[0].text
    reply = sdk.messages.create(
        model=ALIAS,
        max_tokens=24,
        extra_body={"temperature": 0},
        messages=FRANCE,
        stop_sequences=["Paris"],
    )
    assert reply.stop_reason == "stop_sequence"
    assert reply.stop_sequence == "Paris"
    assert reply.content[0].text == full[: full.index("Paris")]


def test_max_tokens_is_reported(sdk):
    reply = sdk.messages.create(
        model=ALIAS,
        max_tokens=3,
        extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "Write a long story."}],
    )
    assert reply.stop_reason == "max_tokens"
    assert reply.usage.output_tokens == 3


def test_unaliased_claude_name_is_not_found(sdk):
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.create(model="claude-opus-4", max_tokens=5, messages=FRANCE)
    assert missing.value.body["error"]["type"] == "not_found_error"


def test_each_error_is_the_sdks_matching_exception(server, sdk):
    with client(server, "gw-00000000-wrong") as bad, pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=ALIAS, max_tokens=5, messages=FRANCE)
    narrow = server.create_key("tiny-only", models=("tiny-*",))
    with client(server, narrow) as c, pytest.raises(anthropic.PermissionDeniedError):
        c.messages.create(model=ALIAS, max_tokens=5, messages=FRANCE)
    with pytest.raises(anthropic.BadRequestError) as bad_request:
        sdk.messages.create(
            model=ALIAS, max_tokens=5, extra_body={"temperature": 3}, messages=FRANCE
        )
    assert bad_request.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        sdk.messages.create(
            model=ALIAS,
            max_tokens=5,
            messages=[
                {"role": "assistant", "content": "hi"},
                {"role": "assistant", "content": "x"},
            ],
        )
    limited = server.create_key(
        "one-a-minute", scopes=("infer", "load"), limits=Limits(requests_per_minute=1)
    )
    with client(server, limited) as c:
        c.messages.create(model="tiny-a", max_tokens=1, messages=FRANCE)
        with pytest.raises(anthropic.RateLimitError) as limited_error:
            c.messages.create(model="tiny-a", max_tokens=1, messages=FRANCE)
    assert int(limited_error.value.response.headers["retry-after"]) >= 1


ROUTES = {
    "anthropic": ["/v1/messages", "/v1/messages/count_tokens"],
    "openai": ["/v1/chat/completions", "/v1/completions"],
    "ollama": ["/api/chat", "/api/generate", "/api/show", "/api/pull"],
}


@pytest.mark.parametrize("family", list(ROUTES))
@pytest.mark.parametrize(
    ("case", "headers", "body", "status"),
    [
        ("no key", {}, b"{}", 401),
        ("malformed json", None, b"{", 400),
        ("wrong types", None, b'{"model": 5, "max_tokens": "x", "messages": 1}', 400),
        ("unknown model", None, None, 404),
        ("body too large", None, b'{"x": "' + b"a" * (5 * 1024 * 1024) + b'"}', 413),
    ],
)
def test_every_error_of_every_route_has_its_apis_shape(server, family, case, headers, body, status):
    for route in ROUTES[family]:
        if body is None:
            content = (
                b'{"model": "no-such-model", "max_tokens": 5, "prompt": "x",'
                b' "messages": [{"role": "user", "content": "x"}]}'
            )
        else:
            content = body
        response = httpx.post(
            server.base_url + route,
            content=content,
            headers={"content-type": "application/json"}
            | (server.headers if headers is None else headers),
            timeout=60,
        )
        assert response.status_code == status, (route, response.text)
        payload = response.json()
        if family == "anthropic":
            assert payload["type"] == "error"
            assert set(payload["error"]) == {"type", "message"}
        elif family == "ollama":
            assert set(payload) == {"error"}
            assert isinstance(payload["error"], str) and payload["error"]
        else:
            assert set(payload) == {"error"}
            assert set(payload["error"]) == {"message", "type", "param", "code"}


def test_ollamas_rate_limit_is_429_with_retry_after_in_ollamas_shape(server):
    limited = server.create_key(
        "ollama-one-a-minute", scopes=("infer", "load"), limits=Limits(requests_per_minute=1)
    )
    body = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "options": {"num_predict": 1},
    }
    headers = {"Authorization": f"Bearer {limited}"}
    first = httpx.post(server.base_url + "/api/chat", json=body, headers=headers, timeout=60)
    assert first.status_code == 200, first.text
    second = httpx.post(server.base_url + "/api/chat", json=body, headers=headers, timeout=60)
    assert second.status_code == 429, second.text
    assert int(second.headers["retry-after"]) >= 1
    payload = second.json()
    assert set(payload) == {"error"}
    assert isinstance(payload["error"], str) and payload["error"]
