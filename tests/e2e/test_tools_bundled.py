"""Tools, constrained output and logprobs on the bundled SmolLM2 model, with the real
OpenAI SDK against a real server.

SmolLM2's template knows no tools: the bundled model's default ``json_tools``
fallback describes them in the system turn.  A 135M model rarely writes a valid
call on its own; forced calls (a named function, or ``required``) are constrained
token by token, so even it produces calls whose arguments validate.  Greedy
decoding makes the streamed and the unstreamed answer the same generation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import jsonschema
import openai
import pytest

pytestmark = pytest.mark.realmodel

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 40}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Time in a timezone", "parameters": TIME},
    },
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def client(bundled_server) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(
        base_url=bundled_server.base_url + "/v1", api_key=bundled_server.admin_key, max_retries=0
    )
    yield sdk
    sdk.close()


def _assemble(chunks) -> tuple[dict[int, dict], str | None, int]:
    """Streamed tool calls by index, the finish reason, and how many argument pieces."""
    calls: dict[int, dict] = {}
    finish, pieces = None, 0
    for chunk in chunks:
        for choice in chunk.choices:
            assert not choice.delta.content, "no text may reach content in a forced call"
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                if delta.id:
                    assert call["id"] is None, "a call's id is sent once"
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    assert call["arguments"] == "", "the name comes before the arguments"
                    call["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    pieces += 1
                    call["arguments"] += delta.function.arguments
            finish = choice.finish_reason or finish
    return calls, finish, pieces


def test_forced_named_call_validates_and_streams_in_fragments_equal_to_unstreamed(client):
    done = client.chat.completions.create(
        model="default", messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=60, temperature=0
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)

    stream = client.chat.completions.create(
        model="default",
        messages=ASK,
        tools=TOOLS,
        tool_choice=NAMED,
        max_tokens=60,
        temperature=0,
        stream=True,
    )
    calls, finish, pieces = _assemble(stream)
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert pieces > 1, "the arguments arrive as fragments while they are generated"
    assert calls[0]["name"] == call.function.name
    assert calls[0]["arguments"] == call.function.arguments
    assert calls[0]["id"].startswith("call_")


def test_required_with_two_tools_calls_one_of_them_validly(client):
    done = client.chat.completions.create(
        model="default",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name in SCHEMAS
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert done.usage.prompt_tokens > 150, "the tool definitions are prompt tokens"


def test_tool_result_round_trip_is_rendered_and_answered(client):
    first = client.chat.completions.create(
        model="default", messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=60, temperature=0
    )
    call = first.choices[0].message.tool_calls[0]
    result = "Sunny, 31 degrees celsius, light wind from the south-west."
    follow_up = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    answer = client.chat.completions.create(
        model="default", messages=follow_up, tools=TOOLS, max_tokens=12, temperature=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    message = answer.choices[0].message
    assert message.content or message.tool_calls
    assert "<tool_call>" not in (message.content or "")
    # The call and its result are part of the prompt: more tokens than the question.
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens + 20


def test_json_schema_output_validates(client):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "maxLength": 30},
            "population_millions": {"type": "integer", "minimum": 0, "maximum": 10000},
        },
        "required": ["city", "country", "population_millions"],
        "additionalProperties": False,
    }
    done = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
        max_tokens=80,
        temperature=0,
    )
    assert done.choices[0].finish_reason == "stop", done.choices[0].message.content
    jsonschema.validate(json.loads(done.choices[0].message.content), schema)


def test_json_object_output_is_a_json_object(client):
    done = client.chat.completions.create(
        model="default",
        messages=[
            {
                "role": "user",
                "content": "Reply with a JSON object giving the name and age of a cat.",
            }
        ],
        response_format={"type": "json_object"},
        max_tokens=120,
        temperature=0,
    )
    assert done.choices[0].finish_reason == "stop", done.choices[0].message.content
    assert isinstance(json.loads(done.choices[0].message.content), dict)


def test_logprobs_unstreamed_and_streamed_agree(client):
    kwargs = dict(
        model="default",
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    done = client.chat.completions.create(**kwargs)
    tokens = done.choices[0].logprobs.content
    # Every generated token but the end of turn.
    assert done.usage.completion_tokens - 1 <= len(tokens) <= done.usage.completion_tokens
    assert "".join(t.token for t in tokens) == done.choices[0].message.content
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert t.bytes == list(t.token.encode())
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token
    streamed = [
        t
        for chunk in client.chat.completions.create(**kwargs, stream=True)
        for choice in chunk.choices
        for t in (choice.logprobs.content if choice.logprobs else [])
    ]
    assert [t.token for t in streamed] == [t.token for t in tokens]
    assert [round(t.logprob, 3) for t in streamed] == [round(t.logprob, 3) for t in tokens]


def test_completions_logprobs(client):
    done = client.completions.create(
        model="default", prompt="The capital of France is", max_tokens=3, temperature=0, logprobs=2
    )
    logprobs = done.choices[0].logprobs
    # mlx-lm's detokenizer drops the first token's leading space from the text.
    assert "".join(logprobs.tokens).lstrip() == done.choices[0].text.lstrip()
    assert len(logprobs.token_logprobs) == 3 and all(v <= 0 for v in logprobs.token_logprobs)
    assert all(len(top) >= 1 for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0


def test_unenforceable_schema_is_refused_naming_the_construct(bundled_server):
    body = {
        "model": "default",
        "messages": ASK,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "if": {"required": ["a"]}}},
        },
    }
    response = httpx.post(
        bundled_server.base_url + "/v1/chat/completions",
        json=body,
        headers=bundled_server.headers,
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_schema" and '"if"' in error["message"]


@pytest.fixture(scope="module")
def claude(bundled_server) -> Iterator[anthropic.Anthropic]:
    sdk = anthropic.Anthropic(
        base_url=bundled_server.base_url, api_key=bundled_server.admin_key, max_retries=0
    )
    yield sdk
    sdk.close()


ANTHROPIC_TOOLS = [
    {"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER},
    {"name": "get_time", "description": "Time in a timezone", "input_schema": TIME},
]


def test_anthropic_forced_tool_use_validates_and_streams_the_same_input(claude):
    kwargs = dict(
        model="default",
        max_tokens=60,
        extra_body={"temperature": 0},
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=ASK,
    )
    done = claude.messages.create(**kwargs)
    assert done.stop_reason == "tool_use"
    (block,) = [b for b in done.content if b.type == "tool_use"]
    assert block.name == "get_weather" and block.id.startswith("toolu_")
    jsonschema.validate(block.input, WEATHER)
    pieces = []
    with claude.messages.stream(**kwargs) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                pieces.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert len(pieces) > 1, "input_json_delta fragments while the input is generated"
    assert json.loads("".join(pieces)) == block.input
    assert final.stop_reason == "tool_use"
    assert [b.input for b in final.content if b.type == "tool_use"] == [block.input]


def test_anthropic_tool_result_round_trip_and_thinking_without_reasoning(claude):
    first = claude.messages.create(
        model="default",
        max_tokens=60,
        extra_body={"temperature": 0},
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=ASK,
    )
    call = next(b for b in first.content if b.type == "tool_use")
    answer = claude.messages.create(
        model="default",
        max_tokens=10,
        extra_body={"temperature": 0},
        tools=ANTHROPIC_TOOLS,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[
            *ASK,
            {"role": "assistant", "content": [call.model_dump()]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": call.id,
                        "content": [{"type": "text", "text": "Sunny and 31 degrees."}],
                    }
                ],
            },
        ],
    )
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert not [b for b in answer.content if b.type == "thinking"], "SmolLM2 does not reason"
    assert answer.usage.input_tokens + answer.usage.cache_read_input_tokens > (
        first.usage.input_tokens + first.usage.cache_read_input_tokens
    )
