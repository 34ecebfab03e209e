"""``max_tokens`` is a ceiling: past the room the prompt leaves in the context it is
clamped to that room, on every API; only a prompt that leaves no room is refused."""

from __future__ import annotations

import anthropic
import httpx
import openai

NO_EOS = {"2": -100}  # tiny models' end-of-turn token never wins
LONG = "a" * 1900  # byte-level tokenizer: about 1,900 of tiny-a's 2,048 tokens


def test_openai_chat_max_tokens_is_clamped_to_the_context(tiny_server):
    with openai.OpenAI(base_url=tiny_server.base_url + "/v1", api_key=tiny_server.admin_key) as sdk:
        done = sdk.chat.completions.create(
            model="tiny-a",
            messages=[{"role": "user", "content": LONG}],
            max_tokens=32000,
            logit_bias=NO_EOS,
            temperature=0,
        )
        stream = sdk.chat.completions.create(
            model="tiny-a",
            messages=[{"role": "user", "content": LONG}],
            max_tokens=32000,
            logit_bias=NO_EOS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert done.choices[0].finish_reason == "length"
    assert done.usage.prompt_tokens + done.usage.completion_tokens == 2048
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.total_tokens == 2048


def test_completions_and_anthropic_clamp_too(tiny_server):
    response = httpx.post(
        tiny_server.base_url + "/v1/completions",
        json={"model": "tiny-a", "prompt": LONG, "max_tokens": 30000, "logit_bias": NO_EOS},
        headers=tiny_server.headers,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == 2048
    sdk = anthropic.Anthropic(base_url=tiny_server.base_url, api_key=tiny_server.admin_key)
    with (
        sdk,
        sdk.messages.stream(
            model="tiny-a", max_tokens=32000, messages=[{"role": "user", "content": LONG}]
        ) as stream,
    ):
        message = stream.get_final_message()
    assert message.stop_reason in ("max_tokens", "end_turn")
    assert message.usage.input_tokens + message.usage.output_tokens <= 2048


def test_max_tokens_past_the_operators_limit_is_lowered_to_it(tiny_server):
    for route, body in [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"prompt": "hi"}),
    ]:
        response = httpx.post(
            tiny_server.base_url + route,
            json={"model": "tiny-a", "max_tokens": 10**9, "logit_bias": NO_EOS} | body,
            headers=tiny_server.headers,
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["finish_reason"] == "length"


def test_only_a_prompt_that_leaves_no_room_is_refused(tiny_server):
    response = httpx.post(
        tiny_server.base_url + "/v1/chat/completions",
        json={"model": "tiny-a", "messages": [{"role": "user", "content": "a" * 2100}]},
        headers=tiny_server.headers,
        timeout=60,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and "no room" in error["message"]
