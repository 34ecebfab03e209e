"""Incremental tool-call parsing, for every format mlx-lm parses (and ``FORCED``).

Each fixture is a turn written the way one model family writes it: answer text
around its calls, two calls in the turn, a call with several arguments and, in
the JSON-ish formats, markup inside string values.  It is fed to
``OutputSplitter`` whole, a character at a time, in chunks of fixed sizes and
in random token-sized pieces; every feeding must give the same answer and
calls, and each call must equal what mlx-lm's own parser reads from the
unstreamed call text (loaded through ``engine.mlx_lm_files``: no MLX import).
A call's name must be sent before the call ends, and its arguments (in the
json, header and params formats) as fragments while they are generated.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine import mlx_lm_files
from engine.outputs import OutputSplitter
from engine.tool_formats import FORCED, NAMES, tool_format

ERROR_PREFIX = "the model's tool call could not be parsed: "

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather forecast for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Write a text file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["path", "content"],
            },
        },
    },
]

PARIS = {"city": "Paris", "days": 3, "unit": "celsius"}


@dataclass(frozen=True)
class Call:
    """The text between a format's start and end markers (one or more calls)."""

    body: str


@dataclass(frozen=True)
class Fixture:
    id: str
    format: str
    parts: tuple[str | Call, ...]
    calls: tuple[tuple[str, dict[str, Any]], ...]  # what mlx-lm's parser reads
    answer: str  # the answer text a client sees
    streams_arguments: bool = True  # False: the arguments come whole at the call's end

    def text(self) -> str:
        fmt = tool_format(self.format)
        out = ""
        for part in self.parts:
            out += part if isinstance(part, str) else fmt.start + part.body + fmt.end
        return out

    def spans(self) -> list[tuple[int, int]]:
        """Each region's (offset of its body, offset where its end marker starts)."""
        fmt = tool_format(self.format)
        spans, at = [], 0
        for part in self.parts:
            if isinstance(part, str):
                at += len(part)
                continue
            body_at = at + len(fmt.start)
            spans.append((body_at, body_at + len(part.body)))
            at = body_at + len(part.body) + len(fmt.end)
        return spans

    def bodies(self) -> list[str]:
        return [part.body for part in self.parts if isinstance(part, Call)]


FIXTURES = [
    Fixture(
        "json_tools",
        "json_tools",
        (
            "I'll check the weather and save a note.\n",
            Call(
                '\n{"name": "get_weather", "arguments": '
                '{"city": "Paris", "days": 3, "unit": "celsius"}}\n'
            ),
            "\n",
            Call(
                '\n{"name": "write_file", "arguments": {"path": "notes/paris.md", '
                '"content": "He said \\"use </tool_call> {here}\\"\\n[done]"}}\n'
            ),
        ),
        (
            ("get_weather", PARIS),
            (
                "write_file",
                {"path": "notes/paris.md", "content": 'He said "use </tool_call> {here}"\n[done]'},
            ),
        ),
        "I'll check the weather and save a note.",
    ),
    Fixture(
        "json_tools-list",
        "json_tools",
        (
            "Two calls at once:",
            Call(
                '[{"name": "get_weather", "parameters": {"city": "Oslo", "days": 1}}, '
                '{"name": "write_file", "parameters": '
                '{"path": "a]}.txt", "content": "{\\"k\\": 1}"}}]'
            ),
            "\nDone.",
        ),
        (
            ("get_weather", {"city": "Oslo", "days": 1}),
            ("write_file", {"path": "a]}.txt", "content": '{"k": 1}'}),
        ),
        "Two calls at once:\nDone.",
    ),
    Fixture(
        "json_tools-string-arguments",
        "json_tools",
        (
            Call(
                '\n{"name": "get_weather", "arguments": '
                '"{\\"city\\": \\"Paris\\", \\"days\\": 3, \\"unit\\": \\"celsius\\"}"}\n'
            ),
        ),
        (("get_weather", PARIS),),
        "",
        streams_arguments=False,  # JSON inside a string is sent decoded, at the end
    ),
    Fixture(
        "mistral",
        "mistral",
        (
            "Checking both.",
            Call(
                'get_weather[ARGS]{"city": "Paris", "days": 3, "unit": "celsius"}'
                '[TOOL_CALLS]write_file[ARGS]{"path": "notes.md", '
                '"content": "a } [TOOL_CALLS] b \\"c\\" [ARGS]"}'
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": 'a } [TOOL_CALLS] b "c" [ARGS]'}),
        ),
        "Checking both.",
    ),
    Fixture(
        "mistral-list",
        "mistral",
        (
            Call(
                '[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, '
                '"unit": "celsius"}}, {"name": "write_file", "arguments": '
                '{"path": "notes.md", "content": "]} \\"x\\""}}]'
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": ']} "x"'}),
        ),
        "",
    ),
    Fixture(
        "kimi_k2",
        "kimi_k2",
        (
            "Let me look that up.",
            Call(
                "<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
                '{"city": "Paris", "days": 3, "unit": "celsius"}<|tool_call_end|>'
                "<|tool_call_begin|>functions.write_file:1<|tool_call_argument_begin|>"
                '{"path": "notes.md", "content": "ends with <|tool_calls_section_end|> '
                '{x} \\"q\\""}<|tool_call_end|>'
            ),
        ),
        (
            ("get_weather", PARIS),
            (
                "write_file",
                {"path": "notes.md", "content": 'ends with <|tool_calls_section_end|> {x} "q"'},
            ),
        ),
        "Let me look that up.",
    ),
    Fixture(
        "qwen3_coder",
        "qwen3_coder",
        (
            "I'll check the forecast first.\n",
            Call(
                "\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                "<parameter=days>\n3\n</parameter>\n<parameter=unit>\ncelsius\n</parameter>\n"
                "</function>\n"
            ),
            "\n",
            Call(
                "\n<function=write_file>\n<parameter=path>\nnotes.md\n</parameter>\n"
                '<parameter=content>\n# Paris\n{"days": 3} <b>bold</b>\n</parameter>\n'
                "</function>\n"
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": '# Paris\n{"days": 3} <b>bold</b>'}),
        ),
        "I'll check the forecast first.",
    ),
    Fixture(
        "glm47",
        "glm47",
        (
            "Let me check.",
            Call(
                "get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
                "<arg_key>days</arg_key><arg_value>3</arg_value>"
                "<arg_key>unit</arg_key><arg_value>celsius</arg_value>"
            ),
            Call(
                "write_file<arg_key>path</arg_key><arg_value>notes.md</arg_value>"
                '<arg_key>content</arg_key><arg_value>{"a": 1} <b></arg_value>'
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": '{"a": 1} <b>'}),
        ),
        "Let me check.",
    ),
    Fixture(
        "laguna",
        "laguna",
        (
            "Checking.\n",
            Call(
                "get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
                "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n"
                "<arg_key>unit</arg_key>\n<arg_value>celsius</arg_value>\n"
            ),
            "\n",
            Call(
                "write_file\n<arg_key>path</arg_key>\n<arg_value>a.txt</arg_value>\n"
                "<arg_key>content</arg_key>\n<arg_value>line one\nline two</arg_value>\n"
            ),
            "\n",
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "a.txt", "content": "line one\nline two"}),
        ),
        "Checking.",
    ),
    Fixture(
        "longcat",
        "longcat",
        (
            "Checking.",
            Call(
                "get_weather\n<longcat_arg_key>city</longcat_arg_key>\n"
                "<longcat_arg_value>Paris</longcat_arg_value>\n"
                "<longcat_arg_key>days</longcat_arg_key>\n"
                "<longcat_arg_value>3</longcat_arg_value>\n"
                "<longcat_arg_key>unit</longcat_arg_key>\n"
                "<longcat_arg_value>celsius</longcat_arg_value>\n"
            ),
            Call(
                "write_file\n<longcat_arg_key>path</longcat_arg_key>\n"
                "<longcat_arg_value>notes.md</longcat_arg_value>\n"
                "<longcat_arg_key>content</longcat_arg_key>\n"
                "<longcat_arg_value>x < y</longcat_arg_value>\n"
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": "x < y"}),
        ),
        "Checking.",
    ),
    Fixture(
        "minimax_m2",
        "minimax_m2",
        (
            "Let me check.\n",
            Call(
                '\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n'
                '<parameter name="days">3</parameter>\n'
                '<parameter name="unit">celsius</parameter>\n</invoke>\n'
                '<invoke name="write_file">\n<parameter name="path">notes.md</parameter>\n'
                '<parameter name="content">a < b && <invoke name="x"></parameter>\n</invoke>\n'
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": 'a < b && <invoke name="x">'}),
        ),
        "Let me check.",
    ),
    Fixture(
        "minicpm5",
        "minicpm5",
        (
            "Let me check.\n",
            Call(
                '"get_weather"><param name="city">Paris</param><param name="days">3</param>'
                '<param name="unit">celsius</param>'
            ),
            "\n",
            Call(
                '"write_file"><param name="path">notes.md</param>'
                '<param name="content"><![CDATA[if a < b & c:\n    print("x")]]></param>'
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": 'if a < b & c:\n    print("x")'}),
        ),
        "Let me check.",
    ),
    Fixture(
        "muse_spark",
        "muse_spark",
        (
            "Checking.",
            Call(
                '<atem:invoke name="get_weather"><atem:parameter name="city">Paris'
                '</atem:parameter><atem:parameter name="days">3</atem:parameter>'
                '<atem:parameter name="unit">celsius</atem:parameter></atem:invoke>'
                '<atem:invoke name="write_file"><atem:parameter name="path">notes.md'
                '</atem:parameter><atem:parameter name="content">Sunny, 21 C'
                "</atem:parameter></atem:invoke>"
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": "Sunny, 21 C"}),
        ),
        "Checking.",
    ),
    Fixture(
        "kimi_k3",
        "kimi_k3",
        (
            "Checking.",
            Call(
                '<|open|>call tool="get_weather" index="1"<|sep|>'
                '<|open|>argument key="city" type="string"<|sep|>Paris<|close|>argument<|sep|>'
                '<|open|>argument key="days" type="integer"<|sep|>3<|close|>argument<|sep|>'
                '<|open|>argument key="unit" type="string"<|sep|>celsius<|close|>argument<|sep|>'
                "<|close|>call<|sep|>"
                '<|open|>call tool="write_file" index="2"<|sep|>'
                '<|open|>argument key="path" type="string"<|sep|>notes.md<|close|>argument<|sep|>'
                '<|open|>argument key="content" type="string"<|sep|>{"a": [1]}'
                "<|close|>argument<|sep|><|close|>call<|sep|>"
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": '{"a": [1]}'}),
        ),
        "Checking.",
    ),
    Fixture(
        "kimi_k3-json",
        "kimi_k3",
        (
            Call(
                '<|open|>call tool="write_file" index="1"<|sep|><|open|>json type="object"<|sep|>'
                '{"path": "notes.md", "content": "a \\"b\\" {c}"}<|close|>json<|sep|>'
                "<|close|>call<|sep|>"
            ),
        ),
        (("write_file", {"path": "notes.md", "content": 'a "b" {c}'}),),
        "",
        streams_arguments=False,  # one JSON block: read when the call closes
    ),
    Fixture(
        "pythonic",
        "pythonic",
        (
            "Checking.",
            Call(
                '[get_weather(city="Paris", days=3, unit="celsius"), '
                'write_file(path="notes.md", content="print(\\"f(x)\\") ]")]'
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": 'print("f(x)") ]'}),
        ),
        "Checking.",
    ),
    Fixture(
        "function_gemma",
        "function_gemma",
        (
            "Checking.",
            Call(
                "call:get_weather{city:<escape>Paris<escape>,days:3,unit:<escape>celsius<escape>}"
            ),
            Call(
                "call:write_file{path:<escape>notes.md<escape>,"
                "content:<escape>see call:x{ , ok<escape>}"
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": "see call:x{ , ok"}),
        ),
        "Checking.",
    ),
    Fixture(
        "gemma4",
        "gemma4",
        (
            "Checking.",
            Call('call:get_weather{city:<|"|>Paris<|"|>,days:3,unit:<|"|>celsius<|"|>}'),
            Call('call:write_file{path:<|"|>notes.md<|"|>,content:<|"|>use call:x{y} "q"<|"|>}'),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": 'use call:x{y} "q"'}),
        ),
        "Checking.",
    ),
    Fixture(
        "forced",
        FORCED,
        (
            Call(
                '[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, '
                '"unit": "celsius"}}, {"name": "write_file", "arguments": '
                '{"path": "notes.md", "content": "]} \\"x\\" {"}}]'
            ),
        ),
        (
            ("get_weather", PARIS),
            ("write_file", {"path": "notes.md", "content": ']} "x" {'}),
        ),
        "",
    ),
    Fixture(
        "forced-single",
        FORCED,
        (
            Call(
                '{"name": "get_weather", "arguments": '
                '{"city": "Paris", "days": 3, "unit": "celsius"}}'
            ),
        ),
        (("get_weather", PARIS),),
        "",
    ),
]
BY_ID = {f.id: f for f in FIXTURES}
ALL_FORMATS = (*NAMES, FORCED)


# --- feeding and assembling ----------------------------------------------------------


@dataclass
class Assembled:
    answer: str = ""
    reasoning: str = ""
    names: dict[int, str] = field(default_factory=dict)
    arguments: dict[int, str] = field(default_factory=dict)
    name_at: dict[int, int] = field(default_factory=dict)  # the feed that sent the name
    fragments_at: dict[int, list[int]] = field(default_factory=dict)  # feeds with arguments
    error: str | None = None

    def calls(self) -> list[tuple[str, str]]:
        return [(self.names[i], self.arguments[i]) for i in sorted(self.names)]

    def result(self) -> tuple[str, str, list[tuple[str, str]], str | None]:
        return self.answer, self.reasoning, self.calls(), self.error


def feed(fmt: str, pieces: Iterable[str]) -> Assembled:
    """Feed the pieces and close; assemble what came out, noting when."""
    splitter = OutputSplitter(tool_format_name=fmt, tools=TOOLS)
    got = Assembled()
    pieces = list(pieces)
    for at, piece in enumerate([*pieces, None]):
        out = splitter.feed(piece) if piece is not None else splitter.close()
        got.answer += out.text
        got.reasoning += out.reasoning
        for delta in out.calls:
            if delta.name is not None:
                assert delta.index not in got.names, "a call's name is sent once"
                assert delta.index == len(got.names), "calls are numbered in order"
                assert delta.id is not None and delta.id.startswith("call_")
                got.names[delta.index] = delta.name
                got.arguments[delta.index] = ""
                got.name_at[delta.index] = at
                got.fragments_at[delta.index] = []
            else:
                assert delta.index in got.names, "the name comes before the arguments"
                assert delta.id is None
            if delta.arguments:
                got.arguments[delta.index] += delta.arguments
                got.fragments_at[delta.index].append(at)
    got.error = splitter.error
    return got


def chunks_of(size: int) -> Callable[[str], list[str]]:
    return lambda text: [text[i : i + size] for i in range(0, len(text), size)]


def token_like(seed: int) -> Callable[[str], list[str]]:
    """Pieces of 1 to 8 characters, as a BPE tokenizer's tokens decode."""

    def split(text: str) -> list[str]:
        rng, out, at = random.Random(seed), [], 0
        while at < len(text):
            size = rng.choice((1, 1, 2, 3, 3, 4, 5, 8))
            out.append(text[at : at + size])
            at += size
        return out

    return split


CHUNKINGS: dict[str, Callable[[str], list[str]]] = {
    "whole": lambda text: [text],
    "chars": chunks_of(1),
    **{f"chunks-{n}": chunks_of(n) for n in (2, 3, 5, 7, 16)},
    **{f"tokens-{seed}": token_like(seed) for seed in range(4)},
}


def parsed_by_mlx_lm(fmt: str, body: str) -> list[tuple[str, dict[str, Any]]]:
    """The calls mlx-lm's own parser reads from one region (``FORCED``: the JSON)."""
    if fmt == FORCED:
        parsed = json.loads(body)
    else:
        parsed = mlx_lm_files.module(f"tool_parsers.{fmt}").parse_tool_call(body, TOOLS)
    calls = []
    for call in parsed if isinstance(parsed, list) else [parsed]:
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):  # a template that renders the arguments as a string
            arguments = json.loads(arguments)
        calls.append((call["name"], arguments))
    return calls


def expected_calls(fixture: Fixture) -> list[tuple[str, dict[str, Any]]]:
    return [call for body in fixture.bodies() for call in parsed_by_mlx_lm(fixture.format, body)]


def region_of_each_call(fixture: Fixture) -> list[tuple[int, int]]:
    """For each call in order, the (body, end marker) offsets of the region holding it."""
    spans = fixture.spans()
    out = []
    for span, body in zip(spans, fixture.bodies(), strict=True):
        out += [span] * len(parsed_by_mlx_lm(fixture.format, body))
    return out


def markers(fmt: str) -> list[str]:
    f = tool_format(fmt)
    return [m for m in (f.start, f.end) if m]


ids = [f.id for f in FIXTURES]


# --- the fixtures themselves -------------------------------------------------------------


def test_every_format_has_a_fixture_with_two_calls_and_one_with_several_arguments():
    for fmt in ALL_FORMATS:
        fixtures = [f for f in FIXTURES if f.format == fmt]
        assert fixtures, f"no fixture in {fmt}"
        assert any(len(f.calls) >= 2 for f in fixtures), f"{fmt}: no turn with two calls"
        assert any(len(args) >= 2 for f in fixtures for _, args in f.calls), fmt


@pytest.mark.parametrize("fixture", FIXTURES, ids=ids)
def test_fixture_parses_with_mlx_lm_parser_as_written(fixture: Fixture):
    assert expected_calls(fixture) == list(fixture.calls)


# --- streamed equals unstreamed ----------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURES, ids=ids)
def test_streamed_call_equals_unstreamed_parse(fixture: Fixture):
    got = feed(fixture.format, [fixture.text()])
    assert got.error is None
    assert [(name, json.loads(args)) for name, args in got.calls()] == expected_calls(fixture)
    assert got.answer == fixture.answer
    assert got.reasoning == ""


@pytest.mark.parametrize("chunking", list(CHUNKINGS), ids=list(CHUNKINGS))
@pytest.mark.parametrize("fixture", FIXTURES, ids=ids)
def test_every_chunking_gives_the_same_calls_and_answer(fixture: Fixture, chunking: str):
    text = fixture.text()
    pieces = CHUNKINGS[chunking](text)
    assert "".join(pieces) == text
    got = feed(fixture.format, pieces)
    assert got.result() == feed(fixture.format, [text]).result()
    assert got.error is None
    assert [(name, json.loads(args)) for name, args in got.calls()] == list(fixture.calls)


@pytest.mark.parametrize("fixture", FIXTURES, ids=ids)
def test_every_split_in_two_gives_the_same_calls(fixture: Fixture):
    """Every marker and value split at each of its characters."""
    text = fixture.text()
    whole = feed(fixture.format, [text]).result()
    for at in range(1, len(text)):
        assert feed(fixture.format, [text[:at], text[at:]]).result() == whole, at


@pytest.mark.parametrize("chunking", ["whole", "chars", "tokens-0"])
@pytest.mark.parametrize("fixture", FIXTURES, ids=ids)
def test_tool_markup_never_reaches_the_answer(fixture: Fixture, chunking: str):
    got = feed(fixture.format, CHUNKINGS[chunking](fixture.text()))
    for marker in markers(fixture.format):
        assert marker not in got.answer
    for name, _ in fixture.calls:
        assert name not in got.answer
    assert "{" not in got.answer and "<" not in got.answer


# --- streaming -------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURES, ids=ids)
def test_name_is_sent_before_the_call_ends(fixture: Fixture):
    text = fixture.text()
    got = feed(fixture.format, chunks_of(1)(text))
    for index, (_, end) in enumerate(region_of_each_call(fixture)):
        last = end if tool_format(fixture.format).end else len(text) - 1
        assert got.name_at[index] < last, f"call {index}: name sent only at the end"


@pytest.mark.parametrize(
    "fixture",
    [f for f in FIXTURES if f.streams_arguments and tool_format(f.format).streaming != "whole"],
    ids=[
        f.id for f in FIXTURES if f.streams_arguments and tool_format(f.format).streaming != "whole"
    ],
)
def test_arguments_are_sent_in_fragments_while_generated(fixture: Fixture):
    text = fixture.text()
    got = feed(fixture.format, chunks_of(1)(text))
    for index, (_, end) in enumerate(region_of_each_call(fixture)):
        assert len(fixture.calls[index][1]) >= 2
        last = end if tool_format(fixture.format).end else len(text) - 1
        early = [at for at in got.fragments_at[index] if at < last]
        assert len(early) >= 2, f"call {index}: arguments sent in {got.fragments_at[index]}"


@pytest.mark.parametrize(
    "fixture",
    [f for f in FIXTURES if tool_format(f.format).streaming == "whole"],
    ids=[f.id for f in FIXTURES if tool_format(f.format).streaming == "whole"],
)
def test_whole_formats_send_arguments_when_the_call_ends(fixture: Fixture):
    text = fixture.text()
    got = feed(fixture.format, chunks_of(1)(text))
    for index, (_, end) in enumerate(region_of_each_call(fixture)):
        assert got.fragments_at[index]
        assert all(at >= end for at in got.fragments_at[index])


def test_streaming_kind_of_each_format():
    kinds = {name: tool_format(name).streaming for name in ALL_FORMATS}
    assert {n for n, k in kinds.items() if k == "whole"} == {
        "pythonic",
        "function_gemma",
        "gemma4",
    }
    assert kinds[FORCED] == "json" and kinds["json_tools"] == "json"


# --- calls that do not parse -----------------------------------------------------------

FORMAT_FIXTURE = {fmt: next(f for f in FIXTURES if f.format == fmt) for fmt in ALL_FORMATS}


def assert_reported(got: Assembled) -> None:
    assert isinstance(got.error, str)
    assert got.error.startswith(ERROR_PREFIX) and len(got.error) > len(ERROR_PREFIX)


@pytest.mark.parametrize("chunking", ["whole", "chars", "tokens-1"])
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_output_cut_off_inside_a_call_is_an_error(fmt: str, chunking: str):
    text = FORMAT_FIXTURE[fmt].text()
    cut = text[: text.index("Paris") + 3]  # generation stopped in an argument's value
    got = feed(fmt, CHUNKINGS[chunking](cut))
    assert_reported(got)
    for marker in markers(fmt):
        assert marker not in got.answer


MARKED = [f for f in ALL_FORMATS if tool_format(f).end]
JSON_BODIES = [f for f in MARKED if tool_format(f).streaming in ("json", "header")]


@pytest.mark.parametrize("chunking", ["whole", "chars"])
@pytest.mark.parametrize("fmt", [f for f in MARKED if f not in JSON_BODIES])
def test_output_ending_before_the_end_marker_is_an_error(fmt: str, chunking: str):
    """Markup formats: a call whose end marker never came may have lost its last
    parameter, so it is reported, not guessed."""
    fixture = FORMAT_FIXTURE[fmt]
    _, end = fixture.spans()[0]
    got = feed(fmt, CHUNKINGS[chunking](fixture.text()[:end]))
    assert_reported(got)


@pytest.mark.parametrize("chunking", ["whole", "chars"])
@pytest.mark.parametrize("fmt", JSON_BODIES)
def test_whole_json_call_without_its_end_marker_is_still_a_call(fmt: str, chunking: str):
    """JSON formats: complete JSON is a complete call (a model that ends its turn
    before the end marker still made it); cut-off JSON does not parse."""
    fixture = FORMAT_FIXTURE[fmt]
    _, end = fixture.spans()[0]
    got = feed(fmt, CHUNKINGS[chunking](fixture.text()[:end]))
    assert got.error is None and got.names


INVALID = [
    (
        "json_tools",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}}\n</tool_call>',
    ),
    (
        "json_tools",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}}\n</tool_call>',
    ),
    ("json_tools", '<tool_call>\n{"name": "get_weather", "arguments": [1, 2]}\n</tool_call>'),
    ("json_tools", '<tool_call>\nget_weather(city="Paris")\n</tool_call>'),
    (
        "json_tools",
        'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"a": 1,}}\n</tool_call>',
    ),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris",}'),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": Paris}}]'),
    (
        "kimi_k2",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city": Paris}<|tool_call_end|><|tool_calls_section_end|>',
    ),
    (
        "kimi_k3",
        '<|open|>tools<|sep|><|open|>call tool="get_weather" index="1"<|sep|>'
        '<|open|>json type="object"<|sep|>{"city": Paris}<|close|>json<|sep|>'
        "<|close|>call<|sep|><|close|>tools<|sep|>",
    ),
    ("gemma4", "<|tool_call>call:get_weather{city:Paris}<tool_call|>"),
    (FORCED, '{"name": "get_weather", "arguments": {"city": "Paris",}}'),
    (FORCED, '{"name": "get_weather", "arguments": {"city": "Paris"}} extra'),
    (FORCED, "get_weather(city='Paris')"),
    # not JSON the scanner can follow: an invalid escape, a brace in a string, a stray bracket
    ("json_tools", '<tool_call>\n{"name": "get\\_weather", "arguments": {}}\n</tool_call>'),
    (FORCED, '"{"}'),
    (FORCED, '[[}{"name": "get_weather", "arguments": {}}'),
]


@pytest.mark.parametrize("chunking", ["whole", "chars"])
@pytest.mark.parametrize(("fmt", "text"), INVALID)
def test_invalid_json_inside_markers_is_an_error(fmt: str, text: str, chunking: str):
    got = feed(fmt, CHUNKINGS[chunking](text))
    assert_reported(got)
    assert not any(m in got.answer for m in markers(fmt))


MISSING = [
    ("json_tools", '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>'),
    ("json_tools", '<tool_call>\n{"name": "", "arguments": {"city": "Paris"}}\n</tool_call>'),
    ("minicpm5", '<function name=""><param name="city">Paris</param></function>'),
    ("mistral", "[TOOL_CALLS]get_weather"),
    ("mistral", "[TOOL_CALLS]get_weather[ARGS]"),
    (
        "kimi_k2",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        "<|tool_call_end|><|tool_calls_section_end|>",
    ),
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n</tool_call>"),
    ("minimax_m2", '<minimax:tool_call>\n<invoke name="get_weather">\n</minimax:tool_call>'),
    ("kimi_k3", '<|open|>tools<|sep|><|open|>call tool="get_weather"<|sep|><|close|>tools<|sep|>'),
    ("pythonic", "<|tool_call_start|>[get_weather]<|tool_call_end|>"),
    ("function_gemma", "<start_function_call>call:get_weather<end_function_call>"),
    ("gemma4", "<|tool_call>call:get_weather<tool_call|>"),
    (FORCED, '{"arguments": {"city": "Paris"}}'),
]


@pytest.mark.parametrize("chunking", ["whole", "chars"])
@pytest.mark.parametrize(("fmt", "text"), MISSING)
def test_call_missing_its_name_or_arguments_is_an_error(fmt: str, text: str, chunking: str):
    got = feed(fmt, CHUNKINGS[chunking](text))
    assert_reported(got)


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_call_region_ends_at_its_end_marker_even_if_a_header_follows(chunking: str):
    text = (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>'
        "<|tool_calls_section_end|>Then functions.x:1<|tool_call_argument_begin|>{} ok"
    )
    got = feed("kimi_k2", CHUNKINGS[chunking](text))
    assert got.result() == (
        "Then functions.x:1<|tool_call_argument_begin|>{} ok",
        "",
        [("get_weather", '{"city": "Paris"}')],
        None,
    )
