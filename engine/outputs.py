"""Splitting a generation's text into answer, reasoning and tool calls, as it grows.

``OutputSplitter.feed(text)`` takes each new piece of decoded text (after stop
strings) and returns what can be passed on: ``Pieces`` of answer text,
reasoning text and tool-call pieces.  Text that may still turn out to be a
marker (``<thi`` before ``nk>``) is held back until it is known, so markup never
reaches the answer.  ``close`` ends the output and returns what was held back;
``error`` then says why a call could not be parsed (its pieces were not all
sent, and the caller reports it), or that the output ended inside a call,
before its format's end marker.  The same text fed whole or piece by piece
gives the same result, so a streamed answer equals an unstreamed one.

Reasoning: between the tokenizer's thinking markers (``<think>``/``</think>``);
a prompt that ends inside an open thinking block (templates that open it
themselves) starts in reasoning.  Tool calls: between the format's markers
(``engine.tool_formats``), only outside reasoning, and inside a call thinking
markers are argument text; in ``FORCED`` format the whole output is the call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.protocol import CallDelta
from engine.tool_formats import FORCED, ToolFormat, tool_format
from engine.toolcalls import CallRegion, ToolParseError, _partial_suffix


@dataclass
class Pieces:
    text: str = ""
    reasoning: str = ""
    calls: list[CallDelta] = field(default_factory=list)

    def add(self, other: Pieces) -> None:
        self.text += other.text
        self.reasoning += other.reasoning
        self.calls.extend(other.calls)

    def __bool__(self) -> bool:
        return bool(self.text or self.reasoning or self.calls)


@dataclass(frozen=True)
class Thinking:
    start: str
    end: str


class OutputSplitter:
    def __init__(
        self,
        *,
        thinking: Thinking | None = None,
        in_reasoning: bool = False,
        tool_format_name: str | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> None:
        self._thinking = thinking
        self.in_reasoning = in_reasoning and thinking is not None
        self._format: ToolFormat | None = (
            tool_format(tool_format_name) if tool_format_name else None
        )
        self._tools = tools or []
        self._held = ""  # reasoning-level text not yet known to be free of markers
        self._content = ""  # answer-level text not yet known to be free of call markers
        self._region: CallRegion | None = None
        self._region_text = ""
        self._calls = 0
        self._after_marker = False
        self._space = ""  # trailing whitespace: sent once more text follows, not before a call
        self.error: str | None = None
        if self._format is not None and self._format.name == FORCED:
            self._region = CallRegion(self._format, self._tools, 0)

    @property
    def calls_made(self) -> int:
        return self._calls

    def feed(self, text: str) -> Pieces:
        out = Pieces()
        self._held += text
        while self._held:
            if not self._split_reasoning(out):
                break
        return out

    def close(self) -> Pieces:
        """The output ended: release what was held back and finish an open call."""
        out = Pieces()
        held, self._held = self._held, ""
        if self.in_reasoning:
            out.reasoning += held
        else:
            while held:
                held = self._answer(held, out)
        if self._region is not None:
            self._end_region(out)
        elif self._content:
            self._text_out(self._content, out)
            self._content = ""
        if not self._calls:
            out.text += self._space  # a plain answer keeps its own trailing space
        self._space = ""
        return out

    # --- reasoning ---------------------------------------------------------------

    def _split_reasoning(self, out: Pieces) -> bool:
        """Move what is known of ``_held`` on; False when the rest must wait.

        Inside a call only its end marker counts (a ``<think>`` in an argument is
        text); what follows the call is split again."""
        thinking = self._thinking
        if thinking is None or (self._region is not None and not self.in_reasoning):
            held, self._held = self._held, ""
            self._held = self._answer(held, out)
            return bool(self._held)
        marker = thinking.end if self.in_reasoning else thinking.start
        at = self._held.find(marker)
        cut = at if at >= 0 else len(self._held) - _partial_suffix(self._held, marker)
        ready, self._held = self._held[:cut], self._held[cut:]
        was_open = self._region is not None
        rest = self._emit_level(ready, out)
        if rest or (self._region is not None and not was_open):  # a call ended or began
            self._held = rest + self._held
            return True
        if at < 0:
            return False
        self._held = self._held[len(marker) :]
        self.in_reasoning = not self.in_reasoning
        self._after_marker = True
        return True

    def _emit_level(self, text: str, out: Pieces) -> str:
        """Pass ``text`` on at the current level; returns what follows a call that ended."""
        if not text:
            return ""
        if self._after_marker:  # the line breaks a model writes after <think>, </think>
            text = text.lstrip("\n")
            if not text:
                return ""
            self._after_marker = False
        if self.in_reasoning:
            out.reasoning += text
            return ""
        return self._answer(text, out)

    # --- tool calls ---------------------------------------------------------------

    def _answer(self, text: str, out: Pieces) -> str:
        """Answer-level text, or a call's; returns what follows a call that ended in it."""
        fmt = self._format
        if fmt is None:
            out.text += text
            return ""
        if self._region is not None:
            return self._grow_region(text, out)
        self._content += text
        at = self._content.find(fmt.start)
        if at < 0:
            keep = _partial_suffix(self._content, fmt.start)
            ready = self._content[: len(self._content) - keep]
            self._content = self._content[len(self._content) - keep :]
            self._text_out(ready, out)
            return ""
        self._text_out(self._content[:at], out)
        self._space = ""  # the line break before a call is part of its markup
        rest = self._content[at + len(fmt.start) :]
        self._content = ""
        self._region = CallRegion(fmt, self._tools, self._calls)
        self._region_text = ""
        return self._grow_region(rest, out)

    def _text_out(self, text: str, out: Pieces) -> None:
        if not text:
            return
        combined = self._space + text
        kept = combined.rstrip()
        out.text += kept
        self._space = combined[len(kept) :]

    def _grow_region(self, text: str, out: Pieces) -> str:
        """Feed the open call; returns the text after its end marker, once seen."""
        assert self._region is not None
        self._region_text += text
        pieces, end = self._region.feed(self._region_text)
        out.calls.extend(pieces)
        if end is None:
            return ""
        assert self._format is not None
        body, rest = self._region_text[:end], self._region_text[end + len(self._format.end) :]
        self._finish_region(body, out)
        return rest

    def _end_region(self, out: Pieces) -> None:
        """The output ended inside a call: cut off, unless the format's calls run to the end
        or are JSON (whole JSON is a whole call: a model that ends its turn without
        the end marker still made it; cut-off JSON does not parse)."""
        assert self._region is not None and self._format is not None
        if not self._format.end or self._format.streaming in ("json", "header"):
            self._finish_region(self._region_text, out)
            return
        self._calls += len(self._region.calls)
        self._region, self._region_text = None, ""
        self._fail(f"the output ended inside it, before {self._format.end!r}")

    def _finish_region(self, body: str, out: Pieces) -> None:
        region, self._region = self._region, None
        assert region is not None
        try:
            out.calls.extend(region.finish(body))
        except ToolParseError as exc:
            self._fail(str(exc))
        self._calls += len(region.calls)
        self._region_text = ""

    def _fail(self, reason: str) -> None:
        if self.error is None:  # the first failure says why
            self.error = f"the model's tool call could not be parsed: {reason}"
