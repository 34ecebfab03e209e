"""``OutputSplitter``: answer text, reasoning and tool calls, as the output grows.

Every case is fed whole, a character at a time and split in two at every
position: the result must not depend on how the text was cut into tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.outputs import OutputSplitter, Thinking

THINK = Thinking("<think>", "</think>")
CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'
)
CALL_2 = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
PARIS = ("get_weather", {"city": "Paris", "days": 3})
CET = ("get_time", {"zone": "CET"})


@dataclass
class Result:
    text: str = ""
    reasoning: str = ""
    calls: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    in_reasoning: bool = False
    calls_made: int = 0
    released: list[str] = field(default_factory=list)  # answer text of each feed, then close

    def key(self) -> tuple[Any, ...]:
        return self.text, self.reasoning, self.calls, self.error, self.in_reasoning

    def parsed_calls(self) -> list[tuple[str, Any]]:
        return [(name, json.loads(arguments)) for name, arguments in self.calls]


def run(pieces: Iterable[str], **options: Any) -> Result:
    splitter = OutputSplitter(**options)
    got = Result()
    for piece in [*pieces, None]:
        out = splitter.feed(piece) if piece is not None else splitter.close()
        got.text += out.text
        got.reasoning += out.reasoning
        got.released.append(out.text)
        for delta in out.calls:
            if delta.name is not None:
                got.calls.append((delta.name, ""))
            name, arguments = got.calls[delta.index]
            got.calls[delta.index] = (name, arguments + delta.arguments)
    got.error = splitter.error
    got.in_reasoning = splitter.in_reasoning
    got.calls_made = splitter.calls_made
    return got


def split(text: str, **options: Any) -> Result:
    """``text`` split however: whole, by characters and in two at every position."""
    whole = run([text], **options)
    assert run(list(text), **options).key() == whole.key(), "fed a character at a time"
    for at in range(1, len(text)):
        assert run([text[:at], text[at:]], **options).key() == whole.key(), f"split at {at}"
    return whole


# --- reasoning ---------------------------------------------------------------------------


def test_reasoning_between_markers_is_separated_from_the_answer():
    got = split("<think>\nThe user wants Paris.\n</think>\n\nIt is sunny.", thinking=THINK)
    assert got.reasoning == "The user wants Paris.\n"
    assert got.text == "It is sunny."
    assert not got.in_reasoning


def test_markers_split_across_pieces_are_recognised():
    pieces = ["<th", "ink", ">plan", "</", "thi", "nk", ">", "done"]
    got = run(pieces, thinking=THINK)
    assert (got.reasoning, got.text) == ("plan", "done")
    assert "<" not in "".join(got.released)


def test_prompt_that_opens_reasoning_starts_in_reasoning():
    splitter = OutputSplitter(thinking=THINK, in_reasoning=True)
    assert splitter.in_reasoning
    got = split("Think it over.</think>\n\nAnswer.", thinking=THINK, in_reasoning=True)
    assert (got.reasoning, got.text) == ("Think it over.", "Answer.")
    assert not got.in_reasoning


def test_output_ending_in_reasoning_stays_reasoning():
    got = split("still thinking", thinking=THINK, in_reasoning=True)
    assert (got.reasoning, got.text, got.in_reasoning) == ("still thinking", "", True)


def test_without_thinking_markers_all_text_is_answer():
    text = "<think>not special</think> here"
    got = split(text)
    assert (got.text, got.reasoning) == (text, "")
    assert not OutputSplitter(in_reasoning=True).in_reasoning  # no markers: no reasoning


def test_several_reasoning_blocks():
    got = split("<think>a</think>b<think>c</think>d", thinking=THINK)
    assert (got.reasoning, got.text) == ("ac", "bd")


@pytest.mark.parametrize(
    ("text", "in_reasoning", "answer", "reasoning"),
    [
        ("The tag is <thi", False, "The tag is <thi", ""),
        ("Almost done </thi", True, "", "Almost done </thi"),
        ("a <b> c <thinking>", False, "a <b> c <thinking>", ""),
    ],
)
def test_partial_thinking_marker_at_the_end_is_released_by_close(
    text: str, in_reasoning: bool, answer: str, reasoning: str
):
    got = split(text, thinking=THINK, in_reasoning=in_reasoning)
    assert (got.text, got.reasoning) == (answer, reasoning)


# --- tool calls and reasoning -----------------------------------------------------------


def test_tool_calls_inside_reasoning_are_not_parsed():
    text = f"<think>Maybe {CALL} would do.</think>\n\nNo call needed."
    got = split(text, thinking=THINK, tool_format_name="json_tools")
    assert got.reasoning == f"Maybe {CALL} would do."
    assert got.text == "No call needed."
    assert (got.calls, got.error, got.calls_made) == ([], None, 0)


def test_reasoning_followed_by_a_tool_call():
    text = f"<think>\nI need the weather.\n</think>\n\n{CALL}\n"
    got = split(text, thinking=THINK, tool_format_name="json_tools")
    assert got.reasoning == "I need the weather.\n"
    assert got.text == ""
    assert got.parsed_calls() == [PARIS]
    assert (got.error, got.calls_made) == (None, 1)


def test_thinking_markers_inside_a_call_are_argument_text():
    call = '<tool_call>\n{"name": "note", "arguments": {"text": "<think>x</think>"}}\n</tool_call>'
    got = split(f"{call}<think>after</think>ok", thinking=THINK, tool_format_name="json_tools")
    assert got.parsed_calls() == [("note", {"text": "<think>x</think>"})]
    assert (got.reasoning, got.text, got.error) == ("after", "ok", None)


def test_reasoning_after_a_call_is_still_separated():
    got = split(f"{CALL}<think>hm</think>Done.", thinking=THINK, tool_format_name="json_tools")
    assert got.parsed_calls() == [PARIS]
    assert (got.reasoning, got.text) == ("hm", "Done.")


# --- answer text around calls ------------------------------------------------------------


def test_whitespace_between_and_after_calls_is_not_answer_text():
    got = split(f"{CALL}\n\n{CALL_2}\n \n", tool_format_name="json_tools")
    assert got.text == ""
    assert got.parsed_calls() == [PARIS, CET]
    assert got.calls_made == 2


def test_text_before_a_call_loses_only_the_line_break_before_it():
    got = split(f"Let me check.\n{CALL}", tool_format_name="json_tools")
    assert got.text == "Let me check."
    assert got.parsed_calls() == [PARIS]


def test_text_after_a_call_is_answer_text():
    got = split(f"{CALL}\nIt is sunny.\n", tool_format_name="json_tools")
    assert got.text == "\nIt is sunny."
    assert got.parsed_calls() == [PARIS]


def test_plain_answer_keeps_its_trailing_whitespace():
    got = split("Hello.\n\n", tool_format_name="json_tools")
    assert got.text == "Hello.\n\n"


@pytest.mark.parametrize("text", ["The tag is <tool", "The tag is <tool_call", "a <tool_use> b"])
def test_partial_call_marker_at_the_end_is_released_by_close(text: str):
    got = split(text, tool_format_name="json_tools")
    assert got.text == text
    assert (got.calls, got.error) == ([], None)


def test_possible_marker_is_held_back_until_known():
    got = run(["Hi <tool", "box> there"], tool_format_name="json_tools")
    assert got.released[0] == "Hi"
    assert got.text == "Hi <toolbox> there"


def test_call_indices_continue_across_regions():
    got = split(f"{CALL}{CALL_2}", tool_format_name="json_tools")
    assert got.parsed_calls() == [PARIS, CET]


def test_forced_output_is_the_call():
    text = '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}'
    got = split(text, tool_format_name="forced")
    assert got.text == ""
    assert got.parsed_calls() == [PARIS]
    assert got.calls_made == 1


# --- calls that do not parse -----------------------------------------------------------


def test_failed_call_keeps_the_text_after_it_however_fed():
    text = f"Sure.\n<tool_call>\nnot json\n</tool_call>\nThen: {CALL_2}"
    got = split(text, tool_format_name="json_tools")
    assert got.text == "Sure.\nThen:"
    assert got.error is not None and "could not be parsed" in got.error


def test_the_first_failed_call_gives_the_error():
    first = "<tool_call>\nnot json\n</tool_call>"
    second = '<tool_call>\n{"name": "x", "arguments": [1]}\n</tool_call>'
    got = split(first + second, tool_format_name="json_tools")
    alone = run([first], tool_format_name="json_tools")
    assert got.error == alone.error


def test_output_cut_off_in_a_call_is_an_error_and_no_answer_text():
    got = split(CALL[:40], tool_format_name="json_tools")
    assert got.error is not None and "could not be parsed" in got.error
    assert got.text == ""


def test_cut_off_call_in_reasoning_is_just_reasoning():
    got = split(f"<think>{CALL[:40]}", thinking=THINK, tool_format_name="json_tools")
    assert (got.reasoning, got.error) == (CALL[:40], None)
