"""Ollama's API end to end, with the real ``ollama`` Python client against a real gateway.

One server holds tiny random-weight models (``tiny-a``, ``tiny-b``) and two
scripted ones (``tests.support.scripted_model``): ``qwen-tools`` writes two tool
calls, ``qwen-think`` thinks first.  The same keys, policies and registry as the
other APIs: a key without ``load`` cannot change a model's residency, a model
outside a key's allowlist is not listed and not found, and every error is
Ollama's ``{"error": "..."}`` with the status the other APIs use.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jsonschema
import ollama
import pytest

from tests.e2e.test_tool_templates import NO_THINKING, THINKING, TOOLS, WEATHER_CALL
from tests.e2e.test_tool_templates import _build as build
from tests.support.server import GatewayServer

CEILING = 3600
HELLO = [{"role": "user", "content": "hi"}]
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def server(
    tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    models = tmp_path_factory.mktemp("ollama-models")
    for name in ("tiny-a", "tiny-b"):
        (models / name).symlink_to(tiny_models_dir / name)
    build(models, "qwen-tools", {"script": WEATHER_CALL}, "qwen_tools")
    spec = {"script": THINKING, "script_after_think_off": NO_THINKING}
    build(models, "qwen-think", spec, "qwen3_thinking")
    gateway = GatewayServer(
        models,
        tmp_path_factory.mktemp("ollama-data"),
        default_model="tiny-a",
        env={
            "GATEWAY_ENGINE_KEEP_ALIVE_MAX": str(CEILING),
            "GATEWAY_ENGINE_MIN_RESIDENCY": "0",
        },
    )
    yield gateway
    gateway.stop()


_clients: list[ollama.Client] = []


def client(server: GatewayServer, key: str | None = None) -> ollama.Client:
    """An ``ollama.Client`` with the key (``""``: none); closed after the test."""
    headers = {"Authorization": f"Bearer {key or server.admin_key}"} if key != "" else {}
    made = ollama.Client(host=server.base_url, headers=headers, timeout=120)
    _clients.append(made)
    return made


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


@pytest.fixture
def admin(server: GatewayServer) -> ollama.Client:
    return client(server)


def state(server: GatewayServer, model: str) -> str:
    return server.model(model)["state"]


def wait_state(server: GatewayServer, model: str, wanted: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while state(server, model) != wanted:
        assert time.monotonic() < deadline, f"{model} never became {wanted}: {state(server, model)}"
        time.sleep(0.05)


def expires(ps: ollama.ProcessResponse, name: str) -> datetime:
    (entry,) = [m for m in ps.models if m.model == name]
    assert entry.expires_at is not None
    return entry.expires_at


# --- listing ---------------------------------------------------------------------------


def test_list_shows_the_models_on_disk_with_tags_sizes_digests_and_details(admin):
    listed = {m.model: m for m in admin.list().models}
    assert {"tiny-a:latest", "tiny-b:latest", "qwen-tools:latest"} <= set(listed)
    tiny = listed["tiny-a:latest"]
    assert tiny.size and tiny.size > 1000
    assert tiny.digest and len(tiny.digest) == 64
    assert tiny.digest != listed["tiny-b:latest"].digest
    assert tiny.modified_at is not None and tiny.modified_at.year >= 2024
    assert tiny.details is not None
    assert tiny.details.family == "llama"
    assert tiny.details.format == "safetensors"
    assert tiny.details.parameter_size not in (None, "", "unknown")
    assert tiny.details.quantization_level == "F32"


def test_show_describes_a_model_from_its_own_files(admin):
    shown = admin.show("tiny-a")
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["general.parameter_count"] > 0
    assert shown.modelinfo["llama.context_length"] == 2048
    assert "<|im_start|>" in (shown.template or "")
    assert "completion" in (shown.capabilities or [])
    assert "tools" in (admin.show("qwen-tools:latest").capabilities or [])
    assert "thinking" in (admin.show("qwen-think").capabilities or [])
    assert "/" not in (shown.modelfile or "").split("FROM", 1)[1].split("\n")[0].strip("/ ")


def test_version_and_the_root_answer_like_ollama(server):
    assert httpx.head(server.base_url + "/").status_code == 200
    root = httpx.get(server.base_url + "/")
    assert root.text == "Ollama is running"
    version = httpx.get(server.base_url + "/api/version", headers=server.headers).json()
    assert version["version"].count(".") == 2


# --- generation ------------------------------------------------------------------------


def test_chat_streamed_and_not_give_the_same_greedy_answer_with_real_counts(admin):
    whole = admin.chat(model="tiny-a", messages=HELLO, options=GREEDY, stream=False)
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.message.role == "assistant"
    assert 0 < whole.eval_count <= 8
    assert whole.prompt_eval_count and whole.prompt_eval_count > 3
    parts = list(admin.chat(model="tiny-a:latest", messages=HELLO, options=GREEDY, stream=True))
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    final = parts[-1]
    assert final.model == "tiny-a:latest"
    assert final.eval_count == whole.eval_count
    assert final.done_reason == whole.done_reason
    for d in (final.total_duration, final.prompt_eval_duration, final.eval_duration):
        assert d and d > 0
    assert final.load_duration is not None
    parts_sum = final.load_duration + final.prompt_eval_duration + final.eval_duration
    assert final.total_duration >= parts_sum * 0.99


def test_num_predict_ends_with_length(admin):
    reply = admin.chat(
        model="tiny-a", messages=HELLO, options={"temperature": 0, "num_predict": 3}, stream=False
    )
    assert reply.eval_count == 3
    assert reply.done_reason == "length"


def test_generate_templated_raw_and_with_a_system_prompt(admin):
    templated = admin.generate(model="tiny-a", prompt="hi", options=GREEDY)
    assert templated.done and templated.response is not None
    raw = admin.generate(model="tiny-a", prompt="hi", raw=True, options=GREEDY)
    # Raw sends two characters, the template wraps them in a turn: fewer prompt tokens.
    assert raw.prompt_eval_count < templated.prompt_eval_count
    system = admin.generate(model="tiny-a", prompt="hi", system="Be brief.", options=GREEDY)
    assert system.prompt_eval_count > templated.prompt_eval_count
    streamed = list(admin.generate(model="tiny-a", prompt="hi", options=GREEDY, stream=True))
    assert "".join(p.response or "" for p in streamed) == templated.response


def test_options_change_the_output_and_seeds_hold(admin):
    base = {"num_predict": 12, "temperature": 0.9, "top_k": 50, "top_p": 1.0}
    first = admin.chat(model="tiny-a", messages=HELLO, options=base | {"seed": 7}, stream=False)
    again = admin.chat(model="tiny-a", messages=HELLO, options=base | {"seed": 7}, stream=False)
    assert first.message.content == again.message.content
    greedy = admin.chat(
        model="tiny-a", messages=HELLO, options={"temperature": 0, "num_predict": 12}
    )
    penalised = admin.chat(
        model="tiny-a",
        messages=HELLO,
        options={"temperature": 0, "num_predict": 12, "repeat_penalty": 2.0, "repeat_last_n": 64},
    )
    assert greedy.message.content != penalised.message.content
    text = greedy.message.content
    stop = text[3:6]
    stopped = admin.chat(
        model="tiny-a",
        messages=HELLO,
        options={"temperature": 0, "num_predict": 12, "stop": [stop]},
    )
    assert stopped.message.content == text[: text.index(stop)]


def test_a_json_schema_format_is_enforced(admin):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "maximum": 9}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    reply = admin.chat(
        model="tiny-a", messages=HELLO, format=schema, options={"temperature": 0, "num_predict": 40}
    )
    jsonschema.validate(json.loads(reply.message.content), schema)
    plain = admin.generate(
        model="tiny-a", prompt="hi", format="json", options={"temperature": 0, "num_predict": 40}
    )
    # Any JSON object: a random model may write one longer than num_predict allows.
    if plain.done_reason == "stop":
        assert isinstance(json.loads(plain.response), dict)
    else:
        assert plain.response.startswith("{")


def test_tool_calls_come_whole_streamed_or_not(admin):
    reply = admin.chat(model="qwen-tools", messages=HELLO, tools=TOOLS, stream=False)
    calls = reply.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"timezone": "CET"}),
    ]
    assert reply.message.content == "Let me check."
    parts = list(admin.chat(model="qwen-tools", messages=HELLO, tools=TOOLS, stream=True))
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.name for c in streamed] == ["get_weather", "get_time"]
    assert dict(streamed[0].function.arguments) == {"city": "Paris", "unit": "celsius"}
    # The round trip: the results go back as tool turns, named as Ollama clients name them.
    follow = admin.chat(
        model="qwen-tools",
        messages=[
            *HELLO,
            {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in calls]},
            {"role": "tool", "tool_name": "get_weather", "content": "18 C"},
            {"role": "tool", "tool_name": "get_time", "content": "14:00"},
        ],
        tools=TOOLS,
        stream=False,
    )
    assert follow.done


def test_think_maps_onto_the_models_reasoning(admin):
    thought = admin.chat(model="qwen-think", messages=HELLO, think=True, stream=False)
    assert thought.message.thinking.strip() == "The user wants the weather."
    assert thought.message.content == "It is sunny in Paris."
    parts = list(admin.chat(model="qwen-think", messages=HELLO, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == thought.message.thinking
    plain = admin.chat(model="qwen-think", messages=HELLO, think=False, stream=False)
    assert not plain.message.thinking
    assert plain.message.content == "Sunny in Paris, without thinking."


# --- keep_alive ------------------------------------------------------------------------


def test_keep_alive_is_honoured_within_the_ceiling(server, admin):
    admin.chat(model="tiny-b", messages=HELLO, options=GREEDY, keep_alive="10h")
    left = (expires(admin.ps(), "tiny-b:latest") - datetime.now(UTC)).total_seconds()
    assert CEILING - 30 < left <= CEILING + 1, "10h is lowered to the operator's ceiling"
    admin.chat(model="tiny-b", messages=HELLO, options=GREEDY, keep_alive=120)
    left = (expires(admin.ps(), "tiny-b:latest") - datetime.now(UTC)).total_seconds()
    assert 90 < left <= 121
    admin.chat(model="tiny-b", messages=HELLO, options=GREEDY, keep_alive=0)
    wait_state(server, "tiny-b", "absent")
    assert "tiny-b:latest" not in {m.model for m in admin.ps().models}


def test_an_empty_request_loads_and_keep_alive_zero_unloads(server, admin):
    if state(server, "tiny-b") == "ready":
        admin.generate(model="tiny-b", keep_alive=0)
        wait_state(server, "tiny-b", "absent")
    loaded = admin.generate(model="tiny-b")
    assert loaded.done and loaded.done_reason == "load"
    assert state(server, "tiny-b") == "ready"
    unloaded = admin.chat(model="tiny-b", messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload"
    wait_state(server, "tiny-b", "absent")


def test_a_key_without_load_cannot_pin_or_evict_a_model(server, admin):
    admin.chat(model="tiny-a", messages=HELLO, options=GREEDY, keep_alive=1800)
    before = expires(admin.ps(), "tiny-a:latest")
    loads_before = server.model("tiny-a")["loads"]
    hostile = client(server, server.create_key("no-load", scopes=("infer",)))
    attempts = [0, "0s", -1, "-1m", "24h", 1, "2m", 600.5]
    errors: list[ollama.ResponseError] = []

    def attack(value, empty: bool = False) -> None:
        try:
            if empty:  # Ollama's way to unload: no prompt, keep_alive 0
                hostile.generate(model="tiny-a", keep_alive=value)
            else:
                hostile.chat(model="tiny-a", messages=HELLO, options=GREEDY, keep_alive=value)
        except ollama.ResponseError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attack, args=(v,)) for v in attempts]
    threads += [threading.Thread(target=attack, args=(v, True)) for v in (0, "0m")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == len(threads)
    assert {e.status_code for e in errors} == {403}
    assert all("load" in e.error for e in errors)
    assert state(server, "tiny-a") == "ready"
    assert server.model("tiny-a")["loads"] == loads_before
    drift = abs((expires(admin.ps(), "tiny-a:latest") - before).total_seconds())
    assert drift < 1, "its residency did not change"
    # The model's own default asks for nothing: allowed, and it does not undo the
    # residency a key with `load` set.
    hostile.chat(model="tiny-a", messages=HELLO, options=GREEDY, keep_alive="10m")
    left = (expires(admin.ps(), "tiny-a:latest") - datetime.now(UTC)).total_seconds()
    assert left > 1700


def test_ps_tells_a_member_nothing_of_when_others_used_the_model(server, admin):
    admin.chat(model="tiny-a", messages=HELLO, options=GREEDY, keep_alive=600)
    time.sleep(2)  # idle: the exact expiry is now two seconds nearer
    member = client(server, server.create_key("watcher", scopes=("infer",)))
    now = datetime.now(UTC)
    seen = (expires(member.ps(), "tiny-a:latest") - now).total_seconds()
    exact = (expires(admin.ps(), "tiny-a:latest") - now).total_seconds()
    assert abs(seen - 600) < 1, "a member sees the keep-alive counted from now"
    assert exact < 598.5, "an admin sees when it really expires"


def test_a_key_without_load_cannot_load_with_an_empty_request(server, admin):
    if state(server, "tiny-b") == "ready":
        admin.generate(model="tiny-b", keep_alive=0)
        wait_state(server, "tiny-b", "absent")
    hostile = client(server, server.create_key("no-load-2", scopes=("infer",)))
    with pytest.raises(ollama.ResponseError) as refused:
        hostile.generate(model="tiny-b")
    assert refused.value.status_code == 403
    assert state(server, "tiny-b") == "absent"


# --- keys and errors -------------------------------------------------------------------


def test_missing_key_and_a_model_outside_the_allowlist(server):
    anonymous = client(server, "")
    with pytest.raises(ollama.ResponseError) as missing:
        anonymous.chat(model="tiny-a", messages=HELLO)
    assert missing.value.status_code == 401
    with pytest.raises(ollama.ResponseError):
        anonymous.list()
    narrow = client(server, server.create_key("qwen-only", models=("qwen-*",)))
    with pytest.raises(ollama.ResponseError) as outside:
        narrow.chat(model="tiny-a", messages=HELLO, options=GREEDY)
    assert outside.value.status_code == 403
    assert {m.model for m in narrow.list().models} == {"qwen-tools:latest", "qwen-think:latest"}
    with pytest.raises(ollama.ResponseError) as hidden:
        narrow.show("tiny-a")
    assert hidden.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as ghost:
        narrow.show("no-such-model")
    assert ghost.value.error.replace("no-such-model", "tiny-a") == hidden.value.error
    assert all(m.model.startswith("qwen-") for m in narrow.ps().models)


def test_delete_is_an_admins(server, tmp_path):
    member = client(server, server.create_key("member", scopes=("infer", "load", "download")))
    with pytest.raises(ollama.ResponseError) as refused:
        member.delete("tiny-b")
    assert refused.value.status_code == 403
    assert "tiny-b:latest" in {m.model for m in member.list().models}


def test_unknown_model_is_not_found_in_ollamas_shape(admin):
    with pytest.raises(ollama.ResponseError) as missing:
        admin.chat(model="ghost:7b", messages=HELLO)
    assert missing.value.status_code == 404
    assert "ghost" in missing.value.error


# --- limits, usage and metrics ---------------------------------------------------------


def usage_rows(server: GatewayServer, key: str) -> list[dict]:

    with server.accounts() as store:
        return store.usage_summary(key_id=key.split("-")[1])


def test_usage_rows_and_metrics_count_ollama_requests_like_any_other(server):
    key = server.create_key("counted", scopes=("infer",))
    counted = client(server, key)
    reply = counted.chat(model="tiny-a", messages=HELLO, options=GREEDY, stream=False)
    streamed = list(counted.generate(model="tiny-a", prompt="hi", options=GREEDY, stream=True))
    (row,) = usage_rows(server, key)
    assert row["requests"] == 2
    expected = reply.eval_count + streamed[-1].eval_count
    assert row["completion_tokens"] == expected
    assert row["prompt_tokens"] == reply.prompt_eval_count + streamed[-1].prompt_eval_count
    metrics = httpx.get(server.base_url + "/metrics", headers=server.headers).text
    assert 'route="/api/chat"' in metrics and 'route="/api/generate"' in metrics


def test_an_unlimited_num_predict_never_passes_the_daily_quota(server):
    from policies.principal import Limits

    key = server.create_key("daily-40", scopes=("infer",), limits=Limits(tokens_per_day=40))
    capped = client(server, key)
    reply = capped.chat(model="tiny-a", messages=HELLO, options={"temperature": 0}, stream=False)
    assert reply.prompt_eval_count + reply.eval_count <= 40
    (row,) = usage_rows(server, key)
    assert row["prompt_tokens"] + row["completion_tokens"] <= 40
    if reply.done_reason == "length":  # the quota, not the model, ended it: used up
        with pytest.raises(ollama.ResponseError) as exhausted:
            capped.chat(model="tiny-a", messages=HELLO, options=GREEDY)
        assert exhausted.value.status_code == 403
        assert "resets at" in exhausted.value.error


def test_a_second_concurrent_stream_over_the_keys_concurrency_is_429(server):
    from policies.principal import Limits

    key = server.create_key("one-at-a-time", scopes=("infer",), limits=Limits(max_concurrent=1))
    # A schema that holds the end of turn off for hundreds of tokens: a long stream.
    long = {"type": "array", "items": {"type": "integer", "maximum": 9}, "minItems": 300}
    body = {"model": "tiny-a", "messages": HELLO, "options": {"num_predict": 2000}, "format": long}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream(
        "POST", server.base_url + "/api/chat", json=body, headers=headers, timeout=60
    ) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # kept: a dropped iterator closes the connection
        next(lines)
        second = httpx.post(server.base_url + "/api/chat", json=body, headers=headers, timeout=60)
        assert second.status_code == 429
        assert set(second.json()) == {"error"}
        assert int(second.headers["retry-after"]) >= 1
    # The slot came back when the first stream's client went away.
    deadline = time.monotonic() + 30
    while True:
        again = httpx.post(
            server.base_url + "/api/chat",
            json={"model": "tiny-a", "messages": HELLO, "stream": False, "options": GREEDY},
            headers=headers,
            timeout=60,
        )
        if again.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.status_code == 200, again.text


@pytest.mark.realmodel
def test_the_bundled_model_answers_through_the_ollama_client(bundled_server):
    real = client(bundled_server)
    france = [{"role": "user", "content": "What is the capital of France?"}]
    options = {"temperature": 0, "num_predict": 24}
    name = "smollm2-135m-instruct:latest"
    parts = list(real.chat(model=name, messages=france, options=options, stream=True))
    text = "".join(p.message.content or "" for p in parts)
    assert "Paris" in text
    final = parts[-1]
    assert final.done and final.eval_count <= 24
    assert final.eval_duration > 0 and final.prompt_eval_duration > 0
    assert "smollm2-135m-instruct:latest" in {m.model for m in real.list().models}
