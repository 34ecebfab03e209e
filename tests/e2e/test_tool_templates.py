"""The template-and-parser path end to end: tiny models whose tokenizer carries a
Qwen-style tool template (mlx-lm picks its ``json_tools`` parser) or Qwen3's
thinking switch, and whose generation follows a script
(``tests.support.scripted_model``), served by a real gateway to the OpenAI SDK.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.support.server import REPO, GatewayServer

WEATHER_CALL = [
    "Let me check.",
    '\n<tool_call>\n{"name": "get_weather", ',
    '"arguments": {"city": ',
    '"Paris", "unit": ',
    '"celsius"}}',
    "\n</tool_call>",
    '\n<tool_call>\n{"name": "get_time", "arguments": {"timezone": "CET"}}\n</tool_call>',
]
BROKEN_CALL = [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": ',
    "Paris}}\n</tool_call>",
]
THINKING = [
    "<think>",
    "\nThe user wants the weather.",
    "\n</think>",
    "\n\nIt is sunny",
    " in Paris.",
]
NO_THINKING = ["Sunny in Paris, without thinking."]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
        },
    },
]
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]


def _build(models: Path, name: str, spec: dict, template: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.scripted_model",
            str(models / name),
            json.dumps(spec),
            template,
        ],
        check=True,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    models = tmp_path_factory.mktemp("scripted-models")
    _build(models, "qwen-tools", {"script": WEATHER_CALL}, "qwen_tools")
    _build(models, "qwen-broken", {"script": BROKEN_CALL}, "qwen_tools")
    spec = {"script": THINKING, "script_after_think_off": NO_THINKING}
    _build(models, "qwen-think", spec, "qwen3_thinking")
    for name in ("plain", "plain-cold"):
        subprocess.run(
            [sys.executable, "-m", "tests.support.tiny_model", str(models / name)],
            check=True,
            cwd=REPO,
        )
    gateway = GatewayServer(
        models, tmp_path_factory.mktemp("scripted-data"), default_model="qwen-tools"
    )
    yield gateway
    gateway.stop()


@pytest.fixture
def sdk(server: GatewayServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=server.admin_key)
    yield client
    client.close()


def _assemble(chunks) -> tuple[str, str, dict[int, dict], list[str], dict]:
    text, reasoning, calls, finishes, extra = "", "", {}, [], {}
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            text += delta.content or ""
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            for piece in delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"name": None, "arguments": "", "pieces": 0})
                if piece.function.name:
                    assert not call["arguments"], "the name comes first"
                    call["name"] = piece.function.name
                if piece.function.arguments:
                    call["arguments"] += piece.function.arguments
                    call["pieces"] += 1
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
                extra = choice.model_extra or {}
    return text, reasoning, calls, finishes, extra


def test_template_tool_calls_are_parsed_out_of_the_text(sdk):
    done = sdk.chat.completions.create(model="qwen-tools", messages=ASK, tools=TOOLS, max_tokens=40)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    first, second = choice.message.tool_calls
    assert (first.function.name, json.loads(first.function.arguments)) == (
        "get_weather",
        {"city": "Paris", "unit": "celsius"},
    )
    assert (second.function.name, json.loads(second.function.arguments)) == (
        "get_time",
        {"timezone": "CET"},
    )
    assert first.id != second.id


def test_template_tool_calls_stream_as_the_unstreamed_ones(sdk):
    done = sdk.chat.completions.create(model="qwen-tools", messages=ASK, tools=TOOLS, max_tokens=40)
    stream = sdk.chat.completions.create(
        model="qwen-tools", messages=ASK, tools=TOOLS, max_tokens=40, stream=True
    )
    text, _, calls, finishes, _ = _assemble(stream)
    assert text == "Let me check."
    assert "<tool_call>" not in text
    assert finishes == ["tool_calls"]
    assert calls[0]["pieces"] > 1, "arguments stream while the model writes them"
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in done.choices[0].message.tool_calls
    ]


def test_tool_choice_none_leaves_the_markup_unparsed_and_tools_unrendered(sdk):
    with_tools = sdk.chat.completions.create(
        model="qwen-tools", messages=ASK, tools=TOOLS, max_tokens=2
    )
    none = sdk.chat.completions.create(
        model="qwen-tools", messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=2
    )
    assert none.choices[0].message.tool_calls is None
    assert none.usage.prompt_tokens < with_tools.usage.prompt_tokens


def test_a_call_that_does_not_parse_is_reported_not_dropped(sdk):
    done = sdk.chat.completions.create(
        model="qwen-broken", messages=ASK, tools=TOOLS, max_tokens=40
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_call_error"
    assert choice.message.tool_calls is None
    assert "<tool_call>" not in (choice.message.content or "")
    assert "could not be parsed" in choice.model_extra["error"]["message"]
    stream = sdk.chat.completions.create(
        model="qwen-broken", messages=ASK, tools=TOOLS, max_tokens=40, stream=True
    )
    _, _, _, finishes, extra = _assemble(stream)
    assert finishes == ["tool_call_error"]
    assert "could not be parsed" in extra["error"]["message"]


def test_reasoning_is_separated_and_counted(sdk):
    done = sdk.chat.completions.create(
        model="qwen-think", messages=[{"role": "user", "content": "Weather?"}], max_tokens=40
    )
    message = done.choices[0].message
    assert message.content == "It is sunny in Paris."
    assert message.model_extra["reasoning_content"].strip() == "The user wants the weather."
    assert "<think>" not in message.content
    assert done.usage.completion_tokens_details.reasoning_tokens == 3
    stream = sdk.chat.completions.create(
        model="qwen-think",
        messages=[{"role": "user", "content": "Weather?"}],
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text, reasoning, _, finishes, _ = _assemble(chunks)
    assert (text, reasoning) == (message.content, message.model_extra["reasoning_content"])
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 3


@pytest.mark.parametrize(
    "switch",
    [
        {"reasoning_effort": "none"},
        {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
    ],
)
def test_reasoning_can_be_switched_off_where_the_template_has_a_switch(sdk, switch):
    done = sdk.chat.completions.create(
        model="qwen-think",
        messages=[{"role": "user", "content": "Weather?"}],
        max_tokens=40,
        **switch,
    )
    message = done.choices[0].message
    assert message.content == "Sunny in Paris, without thinking."
    assert (message.model_extra or {}).get("reasoning_content") is None
    assert done.usage.completion_tokens_details.reasoning_tokens == 0


def test_tools_on_a_model_without_tool_support_are_refused_before_it_loads(server):
    key = server.create_key("tools-prober", scopes=("infer", "load"))
    body = {"model": "plain-cold", "messages": ASK, "tools": TOOLS}
    for extra in ({}, {"tool_choice": "required"}, {"stream": True}):
        response = httpx.post(
            server.base_url + "/v1/chat/completions",
            json=body | extra,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "tools_not_supported"
        assert "plain-cold" in error["message"]
    assert server.model("plain-cold")["state"] == "absent"  # never loaded
    with server.accounts() as store:
        rows = store.usage_summary(key_id=key.split("-")[1])
    assert sum(row.get("completion_tokens", 0) for row in rows) == 0


def test_tool_turns_without_tools_still_need_tool_support(server):
    conversation = [
        *ASK,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "plain", "messages": conversation},
        headers=server.headers,
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "tools_not_supported"


@pytest.fixture
def claude(server: GatewayServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=server.base_url, api_key=server.admin_key)
    yield client
    client.close()


CLAUDE_TOOLS = [
    {"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS
]


def test_anthropic_template_tool_use_blocks_streamed_and_not(claude):
    done = claude.messages.create(
        model="qwen-tools", max_tokens=40, tools=CLAUDE_TOOLS, messages=ASK
    )
    assert done.stop_reason == "tool_use"
    assert [b.type for b in done.content] == ["text", "tool_use", "tool_use"]
    assert done.content[0].text == "Let me check."
    assert done.content[1].input == {"city": "Paris", "unit": "celsius"}
    assert done.content[2].name == "get_time"
    events = []
    with claude.messages.stream(
        model="qwen-tools", max_tokens=40, tools=CLAUDE_TOOLS, messages=ASK
    ) as stream:
        events = [e.type for e in stream if e.type.startswith(("content_block", "message"))]
        final = stream.get_final_message()
    assert [b.model_dump() for b in final.content][1:] == [
        b.model_dump() | {"id": f.id}
        for b, f in zip(done.content[1:], final.content[1:], strict=True)
    ]
    assert events.count("content_block_start") == events.count("content_block_stop") == 3
    assert final.stop_reason == "tool_use"


def test_anthropic_thinking_is_a_signed_thinking_block_and_can_be_disabled(claude):
    ask = [{"role": "user", "content": "Weather?"}]
    thought = claude.messages.create(
        model="qwen-think",
        max_tokens=40,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=ask,
    )
    thinking, text = thought.content
    assert thinking.type == "thinking" and thinking.signature
    assert thinking.thinking.strip() == "The user wants the weather."
    assert text.text == "It is sunny in Paris."
    with claude.messages.stream(
        model="qwen-think",
        max_tokens=40,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=ask,
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "thinking_delta" in deltas and "signature_delta" in deltas
    assert final.content[0].thinking == thinking.thinking
    for off in ({"thinking": {"type": "disabled"}}, {}):
        plain = claude.messages.create(model="qwen-think", max_tokens=40, messages=ask, **off)
        assert [b.type for b in plain.content] == ["text"]
        assert plain.content[0].text == "Sunny in Paris, without thinking."


def test_anthropic_hints_are_accepted_and_unhonourable_fields_refused(server):
    url = server.base_url + "/v1/messages?beta=true"
    headers = server.headers | {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "interleaved-thinking-2025-05-14,context-management-2025-06-27",
        "x-claude-code-session-id": "abc",
    }
    hinted = {
        "model": "qwen-tools",
        "max_tokens": 32000,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hi."},
                    {"type": "text", "text": "Weather?", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "assistant", "content": "Let me see."},
            {"role": "system", "content": "Answer in English."},
            {"role": "user", "content": "Paris."},
        ],
        "tools": [CLAUDE_TOOLS[0] | {"cache_control": {"type": "ephemeral"}}],
        "thinking": {"type": "enabled", "budget_tokens": 31999, "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
        "metadata": {"user_id": "someone"},
        "service_tier": "auto",
        "stream": True,
    }
    with httpx.stream("POST", url, json=hinted, headers=headers, timeout=60) as response:
        assert response.status_code == 200, response.read()
        body = response.read().decode()
    assert "event: message_stop" in body
    refused = {
        "image": {"type": "image", "source": {"type": "base64", "media_type": "image/png"}},
        "document": {"type": "document", "source": {"type": "text", "data": "x"}},
    }
    for name, block in refused.items():
        bad = hinted | {"stream": False, "messages": [{"role": "user", "content": [block]}]}
        response = httpx.post(url, json=bad, headers=headers, timeout=30)
        assert response.status_code == 400 and name in response.text.lower(), response.text
    server_tool = hinted | {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    response = httpx.post(url, json=server_tool, headers=headers, timeout=30)
    assert response.status_code == 400 and "web_search_20250305" in response.text
    mcp = hinted | {"mcp_servers": [{"type": "url", "url": "http://x", "name": "x"}]}
    response = httpx.post(url, json=mcp, headers=headers, timeout=30)
    assert response.status_code == 400 and "mcp_servers" in response.text


RESPONSES_TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Lyon"]}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    {"type": "function", "name": "get_time", "parameters": TOOLS[1]["function"]["parameters"]},
]


def test_responses_text_streamed_and_not(sdk):
    done = sdk.responses.create(model="qwen-think", input="Weather?", reasoning={"effort": "none"})
    assert done.status == "completed"
    assert done.output_text == "Sunny in Paris, without thinking."
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    thought = sdk.responses.create(model="qwen-think", input="Weather?", instructions="Be brief.")
    assert [item.type for item in thought.output] == ["reasoning", "message"]
    assert thought.output_text == "It is sunny in Paris."
    assert thought.usage.output_tokens_details.reasoning_tokens == 3
    events = list(
        sdk.responses.create(
            model="qwen-think", input="Weather?", instructions="Be brief.", stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == thought.output_text
    assert kinds.index("response.content_part.added") < kinds.index("response.output_text.delta")
    assert events[-1].response.output_text == thought.output_text


def test_responses_parsed_and_forced_function_calls(sdk):
    parsed = sdk.responses.create(model="qwen-tools", input="Weather?", tools=RESPONSES_TOOLS)
    calls = [item for item in parsed.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": "Paris", "unit": "celsius"}
    forced = sdk.responses.create(
        model="qwen-tools",
        input="Weather?",
        tools=RESPONSES_TOOLS,
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=120,
        temperature=0,
    )
    (call,) = [item for item in forced.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    assert set(json.loads(call.arguments)) == {"city", "unit"}
    with sdk.responses.stream(
        model="qwen-tools",
        input="Weather?",
        tools=RESPONSES_TOOLS,
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=120,
        temperature=0,
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    streamed = next(item for item in final.output if item.type == "function_call")
    assert "".join(deltas) == streamed.arguments == call.arguments


def test_responses_function_call_output_round_trip(sdk):
    first = sdk.responses.create(model="qwen-tools", input="Weather?", tools=RESPONSES_TOOLS)
    call = next(item for item in first.output if item.type == "function_call")
    follow_up = [
        {"role": "user", "content": "Weather?"},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 31C"},
    ]
    answer = sdk.responses.create(model="qwen-tools", input=follow_up, tools=RESPONSES_TOOLS)
    assert answer.status == "completed"
    assert answer.usage.input_tokens > first.usage.input_tokens


def test_responses_refuses_what_it_cannot_honour(server):
    def post(body: dict) -> httpx.Response:
        return httpx.post(
            server.base_url + "/v1/responses",
            json={"model": "qwen-tools", "input": "hi"} | body,
            headers=server.headers,
            timeout=30,
        )

    stored = post({"previous_response_id": "resp_123"})
    assert stored.status_code == 400 and "previous_response_id" in stored.text
    assert post({"tools": [{"type": "file_search"}]}).status_code == 400
    # Codex offers a hosted web_search in every request: not offered to the model.
    assert post({"tools": [{"type": "web_search"}], "max_output_tokens": 4}).status_code == 200
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]
    assert post({"input": image}).status_code == 400
    assert post({"input": [{"type": "computer_call"}]}).status_code == 400
    hints = {"store": False, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k"}
    assert post(hints | {"client_metadata": {"x": "y"}, "max_output_tokens": 4}).status_code == 200
    missing = httpx.get(server.base_url + "/v1/responses/resp_123", headers=server.headers)
    assert missing.status_code == 404


def test_an_agents_second_turn_reads_its_first_from_the_prompt_cache(sdk, claude):
    """Agents resend the whole conversation each turn: the second turn's prompt
    starts with the first's, so the prompt cache answers it."""
    system = "You are a coding agent. " * 40
    first = claude.messages.create(
        model="qwen-tools",
        max_tokens=20,
        system=system,
        tools=CLAUDE_TOOLS,
        messages=[{"role": "user", "content": "Weather?"}],
    )
    second = claude.messages.create(
        model="qwen-tools",
        max_tokens=20,
        system=system,
        tools=CLAUDE_TOOLS,
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": b.id, "content": "sunny"}
                    for b in first.content
                    if b.type == "tool_use"
                ],
            },
        ],
    )
    assert second.usage.cache_read_input_tokens >= first.usage.input_tokens
    turn = [{"role": "user", "content": "Weather?"}]
    one = sdk.responses.create(model="qwen-tools", input=turn, instructions=system)
    two = sdk.responses.create(
        model="qwen-tools",
        input=[*turn, {"role": "assistant", "content": one.output_text}, *turn],
        instructions=system,
    )
    assert two.usage.input_tokens_details.cached_tokens >= one.usage.input_tokens - 2
