"""A hostile key holder against tools, constraints and logprobs.

Each test asserts what did *not* happen: no model loaded, no token charged, no
500, no stalled neighbour, no output outside the schema.  Tiny random models
generate anything at all, which is what a constraint must hold against.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest

from policies.principal import Limits
from tests.support.server import REPO, GatewayServer

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string", "maxLength": 8}},
            "required": ["q"],
        },
    },
}
HELLO = [{"role": "user", "content": "hello"}]


def _schema(values: list[str]) -> dict:
    return {
        "type": "object",
        "properties": {
            "pick": {"enum": values},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
            "note": {"type": "string", "maxLength": 6},
        },
        "required": ["pick", "n", "note"],
        "additionalProperties": False,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    models = tmp_path_factory.mktemp("attack-tool-models")
    for seed, name in enumerate(["tiny-a", "tiny-cold"]):
        subprocess.run(
            [sys.executable, "-m", "tests.support.tiny_model", str(models / name), str(seed)],
            check=True,
            cwd=REPO,
        )
    script = json.dumps({"script": ["Hi."], "max_position_embeddings": 2048})
    for name in ("qwen-tools", "qwen-cold"):
        subprocess.run(
            [sys.executable, "-m", "tests.support.scripted_model", str(models / name), script],
            check=True,
            cwd=REPO,
        )
    gateway = GatewayServer(
        models,
        tmp_path_factory.mktemp("attack-tool-data"),
        default_model="tiny-a",
        env={"GATEWAY_ENGINE_MIN_RESIDENCY": "0"},
    )
    yield gateway
    gateway.stop()


def _post(server: GatewayServer, key: str, body: dict) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def _tokens_charged(server: GatewayServer, key: str) -> int:
    with server.accounts() as store:
        rows = store.usage_summary(key_id=key.split("-")[1])
    return sum(row["prompt_tokens"] + row["completion_tokens"] for row in rows)


HOSTILE = {
    "129 tools": {
        "tools": [TOOL | {"function": TOOL["function"] | {"name": f"f{i}"}} for i in range(129)]
    },
    "huge parameters": {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "big",
                    "parameters": {"type": "object", "description": "x" * 70_000},
                },
            }
        ]
    },
    "two tools of one name": {"tools": [TOOL, TOOL]},
    "tool_choice names a missing tool": {
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "other"}},
    },
    "tool_choice without tools": {"tool_choice": "required"},
    "tool type not function": {"tools": [{"type": "code_interpreter"}]},
    "function name with spaces": {"tools": [{"type": "function", "function": {"name": "rm -rf"}}]},
    "parallel_tool_calls not a boolean": {"tools": [TOOL], "parallel_tool_calls": "yes"},
    "top_logprobs over 20": {"logprobs": True, "top_logprobs": 21},
    "top_logprobs without logprobs": {"top_logprobs": 2},
    "unknown response_format": {"response_format": {"type": "xml"}},
    "schema not an object": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}
    },
    "unenforceable schema": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "if": {}}},
        }
    },
    "dangling $ref": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"$ref": "#/definitions/nope"}},
        }
    },
    "response_format with tools": {"tools": [TOOL], "response_format": {"type": "json_object"}},
    "unknown template switch": {"chat_template_kwargs": {"add_vision_id": True}},
    "legacy functions": {"functions": [{"name": "f"}]},
    "tool message without tool_call_id": {"messages": [*HELLO, {"role": "tool", "content": "42"}]},
    "user message with tool_calls": {
        "messages": [
            {
                "role": "user",
                "content": "x",
                "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}],
            }
        ]
    },
    "unknown reasoning_effort": {"reasoning_effort": "maximum"},
}


@pytest.mark.parametrize("model", ["tiny-cold", "qwen-cold"])
@pytest.mark.parametrize("extra", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_tool_fields_are_400s_with_no_load_and_no_charge(server, model, extra):
    key = server.create_key("hostile-tools", scopes=("infer", "load"))
    body = {"model": model, "messages": HELLO, "max_tokens": 4} | extra
    for stream in (False, True):
        response = _post(server, key, body | {"stream": stream})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
    assert server.model(model)["state"] == "absent", "validation must come before any load"
    assert _tokens_charged(server, key) == 0


def test_tool_definitions_count_against_token_limits(server):
    tool = {
        "type": "function",
        "function": {"name": "long", "description": "describe " * 60, "parameters": {}},
    }
    key = server.create_key(
        "tool-tokens", scopes=("infer", "load"), limits=Limits(tokens_per_minute=300)
    )
    small = _post(server, key, {"model": "qwen-tools", "messages": HELLO, "max_tokens": 4})
    assert small.status_code == 200, small.text
    response = _post(
        server, key, {"model": "qwen-tools", "messages": HELLO, "tools": [tool], "max_tokens": 4}
    )
    assert response.status_code == 429, response.text
    assert _tokens_charged(server, key) == small.json()["usage"]["total_tokens"]


def test_tool_definitions_count_against_the_context(server):
    tool = {
        "type": "function",
        "function": {"name": "huge", "description": "d" * 16_000, "parameters": {}},
    }
    key = server.create_key("tool-context", scopes=("infer", "load"))
    body = {"model": "qwen-tools", "messages": HELLO, "tools": [tool], "max_tokens": 4}
    response = _post(server, key, body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert _tokens_charged(server, key) == 0


def _constrained(sdk: openai.OpenAI, values: list[str], **extra) -> str:
    done = sdk.chat.completions.create(
        model="tiny-a",
        messages=HELLO,
        max_tokens=60,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "pick", "schema": _schema(values), "strict": True},
        },
        **extra,
    )
    assert done.choices[0].finish_reason == "stop", done.choices[0].message.content
    return done.choices[0].message.content


def test_concurrent_constrained_requests_each_keep_their_own_schema(server):
    """Matchers are per request: four schemas interleaved on one model, plus an
    unconstrained neighbour that keeps streaming."""
    sdk = openai.OpenAI(base_url=server.base_url + "/v1", api_key=server.admin_key)
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    neighbour: list[str] = []

    def run(i: int) -> None:
        try:
            results[i] = _constrained(sdk, [f"v{i}a", f"v{i}b"], seed=i)
        except BaseException as exc:
            errors.append(exc)

    def plain() -> None:
        stream = sdk.chat.completions.create(  # no end of turn (1% likely first, unseeded)
            model="tiny-a",
            messages=HELLO,
            max_tokens=30,
            stream=True,
            temperature=1,
            logit_bias={"2": -100},
        )
        neighbour.extend(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=plain))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    sdk.close()
    assert not errors, errors
    for i, text in results.items():
        value = json.loads(text)
        jsonschema.validate(value, _schema([f"v{i}a", f"v{i}b"]))
    assert len(results) == 4
    assert "".join(neighbour), "the unconstrained neighbour was not starved"


def test_constrained_output_is_reproducible_with_a_seed_through_the_prompt_cache(server):
    sdk = openai.OpenAI(base_url=server.base_url + "/v1", api_key=server.admin_key)
    first = _constrained(sdk, ["x", "y"], seed=7, temperature=1)
    again = sdk.chat.completions.create(
        model="tiny-a",
        messages=HELLO,
        max_tokens=60,
        seed=7,
        temperature=1,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "pick", "schema": _schema(["x", "y"])},
        },
    )
    sdk.close()
    assert again.choices[0].message.content == first
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_a_constrained_stream_closed_early_frees_the_model(server):
    sdk = openai.OpenAI(base_url=server.base_url + "/v1", api_key=server.admin_key)
    stream = sdk.chat.completions.create(
        model="tiny-a",
        messages=HELLO,
        max_tokens=200,
        stream=True,
        response_format={"type": "json_object"},
    )
    next(iter(stream))
    stream.close()
    after = _constrained(sdk, ["p", "q"], seed=1)
    sdk.close()
    jsonschema.validate(json.loads(after), _schema(["p", "q"]))
    assert server.model("tiny-a")["state"] == "ready"


ANTHROPIC_HOSTILE = {
    "server tool": {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
    "mcp servers": {"mcp_servers": [{"type": "url", "url": "http://127.0.0.1:9", "name": "x"}]},
    "image block": {
        "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url"}}]}]
    },
    "image in a tool result": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}
                ],
            }
        ]
    },
    "unknown block type": {"messages": [{"role": "user", "content": [{"type": "evil"}]}]},
    "tool_use in a user turn": {
        "messages": [
            {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
        ]
    },
    "tool_choice names a missing tool": {
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "g"},
    },
    "unknown thinking type": {"thinking": {"type": "always"}},
    "huge input_schema": {
        "tools": [{"name": "f", "input_schema": {"type": "object", "description": "x" * 70_000}}]
    },
    "unenforceable input_schema": {
        "tools": [{"name": "f", "input_schema": {"type": "object", "if": {}}}],
        "tool_choice": {"type": "any"},
    },
}
RESPONSES_HOSTILE = {
    "previous_response_id": {"previous_response_id": "resp_x"},
    "background": {"background": True},
    "huge parameters": {
        "tools": [{"type": "function", "name": "f", "parameters": {"description": "x" * 70_000}}]
    },
    "hosted tool": {"tools": [{"type": "file_search", "vector_store_ids": ["x"]}]},
    "web_search required": {"tools": [{"type": "web_search"}], "tool_choice": "required"},
    "namespace with a hosted tool": {
        "tools": [{"type": "namespace", "name": "n", "tools": [{"type": "computer_use"}]}]
    },
    "image input": {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
    "unknown item": {"input": [{"type": "computer_call_output", "call_id": "c"}]},
    "function_call without call_id": {"input": [{"type": "function_call", "name": "f"}]},
    "unenforceable text format": {
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"if": {}}}}
    },
}


@pytest.mark.parametrize(
    ("route", "base", "extra"),
    [
        ("/v1/messages", {"max_tokens": 8, "messages": HELLO}, extra)
        for extra in ANTHROPIC_HOSTILE.values()
    ]
    + [("/v1/responses", {"input": "hi"}, extra) for extra in RESPONSES_HOSTILE.values()],
    ids=[f"anthropic: {k}" for k in ANTHROPIC_HOSTILE]
    + [f"responses: {k}" for k in RESPONSES_HOSTILE],
)
def test_hostile_agent_api_fields_are_400s_with_no_load_and_no_charge(server, route, base, extra):
    key = server.create_key("hostile-agent", scopes=("infer", "load"))
    for stream in (False, True):
        response = httpx.post(
            server.base_url + route,
            json={"model": "qwen-cold"} | base | extra | {"stream": stream},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert response.status_code == 400, response.text
    assert server.model("qwen-cold")["state"] == "absent"
    assert _tokens_charged(server, key) == 0
