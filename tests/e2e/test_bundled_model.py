"""The bundled SmolLM2-135M-Instruct through the real server and the real OpenAI SDK.

Few and short: the CPU decodes about 7.5 tokens/s.  Greedy decoding keeps the
answers deterministic.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.realmodel

MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def sdk(bundled_server):
    import openai

    client = openai.OpenAI(
        base_url=bundled_server.base_url + "/v1", api_key=bundled_server.admin_key, max_retries=0
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def tokenizer(bundled_models_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_models_dir / MODEL))


@pytest.fixture(scope="module")
def france_answer(sdk):
    return sdk.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=24, temperature=0)


def test_chat_answers_the_capital_of_france_with_paris(france_answer):
    choice = france_answer.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert france_answer.model == MODEL


def test_usage_counts_match_the_models_tokenizer(france_answer, tokenizer):
    prompt = tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=False)
    expected = len(tokenizer.encode(prompt, add_special_tokens=False))
    usage = france_answer.usage
    assert usage.prompt_tokens == expected
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    text = france_answer.choices[0].message.content
    ended = 1 if france_answer.choices[0].finish_reason == "stop" else 0  # the end-of-turn token
    assert usage.completion_tokens == len(tokenizer.encode(text, add_special_tokens=False)) + ended


def test_streamed_chat_gives_the_same_text_and_usage(sdk, france_answer):
    stream = sdk.chat.completions.create(
        model="default",
        messages=FRANCE,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert roles == ["assistant"]
    assert len(pieces) > 3  # streamed incrementally, not in one piece
    assert "".join(pieces) == france_answer.choices[0].message.content
    assert finish == france_answer.choices[0].finish_reason
    assert usage.completion_tokens == france_answer.usage.completion_tokens
    # The same prompt again: its prefix comes from the worker's prompt cache.
    assert usage.prompt_tokens_details.cached_tokens > 0


def test_stop_string_cuts_the_text_before_it(sdk, france_answer):
    full = france_answer.choices[0].message.content
    stop = "Paris"
    reply = sdk.chat.completions.create(
        model=MODEL, messages=FRANCE, max_tokens=24, temperature=0, stop=[stop]
    )
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == full[: full.index(stop)]


def test_max_tokens_ends_with_finish_reason_length(sdk):
    reply = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long poem about the sea."}],
        max_tokens=5,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_text_completion_streams_and_counts(sdk):
    plain = sdk.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert plain.object == "text_completion"
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 4
    streamed = sdk.completions.create(
        model=MODEL,
        prompt="The capital of France is",
        max_tokens=4,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == plain.choices[0].text


def test_seed_makes_sampling_reproducible(sdk):
    def sample(seed: int) -> str:
        reply = sdk.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=1.0, seed=seed
        )
        return reply.choices[0].text

    assert sample(7) == sample(7)


def test_max_tokens_beyond_the_context_is_a_ceiling_not_a_refusal(sdk):
    """Claude Code asks for max_tokens 32000; the bundled model has 8,192 tokens."""
    done = sdk.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=32000,
        temperature=0,
    )
    assert done.choices[0].finish_reason == "stop"
    assert done.choices[0].message.content
