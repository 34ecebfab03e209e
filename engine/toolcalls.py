"""One tool-call region of the output, parsed as it grows (see ``engine.tool_formats``).

``CallRegion.feed(region)`` takes the text after the format's start marker so
far and returns the new pieces (``CallDelta``: a call's id and name once known,
then fragments of its JSON arguments) and, once the end marker is seen outside
any JSON string, where the region ends.  ``finish`` parses the whole region
with mlx-lm's parser, passes on what is still unsent, and checks that what was
streamed is what the parser read: the arguments a client assembles from the
fragments are then exactly the unstreamed call's.  Feeding the same text in one
piece or token by token yields the same calls.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from engine.protocol import CallDelta
from engine.tool_formats import ToolFormat

ARG_KEYS = ("arguments", "parameters")


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


class ToolParseError(ValueError):
    """The model's tool markup could not be read as calls."""


@dataclass
class _Call:
    index: int
    name: str | None = None
    arguments: str = ""  # sent so far
    pending: str = ""  # arguments seen before the name (sent with it)
    keys: dict[str, Any] = field(default_factory=dict)  # "params": pairs sent
    closed: bool = False


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest proper prefix of ``marker`` that ``text`` ends with."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def _normalized(parsed: Any) -> list[tuple[str, Any]]:
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            raise ToolParseError(f"not a tool call: {call!r}"[:200])
        arguments: Any = next((call[k] for k in ARG_KEYS if k in call), {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError as exc:
                raise ToolParseError(f"the arguments of {call['name']} are not JSON") from exc
        if not isinstance(arguments, dict):
            raise ToolParseError(f"the arguments of {call['name']} are not a JSON object")
        out.append((call["name"], arguments))
    return out


def _json_string(literal: str) -> str | None:
    """The value of a JSON string literal; None if it is not a valid one."""
    try:
        value = json.loads(literal)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _pair(key: str, value: Any) -> str:
    return json.dumps(key, ensure_ascii=False) + ": " + json.dumps(value, ensure_ascii=False)


class _JsonScan:
    """Where JSON text stands: nesting, and whether inside a string."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.in_string = False
        self.escaped = False
        self.string_start = -1

    def step(self, ch: str, at: int) -> bool:
        """Take one character; True when it closed a string."""
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif ch == '"':
                self.in_string = False
                return True
        elif ch == '"':
            self.in_string, self.string_start = True, at
        elif ch in "{[":
            self.stack.append(ch)
        elif ch in "}]" and self.stack:
            self.stack.pop()
        return False


class CallRegion:
    """The calls inside one region between a start and an end marker."""

    def __init__(self, fmt: ToolFormat, tools: list[dict[str, Any]], first_index: int) -> None:
        self.fmt = fmt
        self.tools = tools or None
        self.calls: list[_Call] = []
        self._first = first_index
        self._text = ""
        self._pos = 0  # characters scanned
        self._scan = _JsonScan()
        self._mode = fmt.streaming
        self._call_level = 0  # json: nesting of the call objects
        self._key: str | None = None  # json: the key whose value is being read
        self._expect_key = False
        self._value_start = -1
        self._args_from = -1  # where the arguments value being streamed started
        self._search_from = 0  # header/whole: where the next header may start
        self._cut = 0  # params: the end of the closed prefix parsed last
        self._quote: str | None = None  # whole: the string literal open at _quoted_to
        self._quoted_to = 0

    # --- the public side -----------------------------------------------------

    def feed(self, region: str) -> tuple[list[CallDelta], int | None]:
        """New pieces for ``region`` (the text after the start marker so far), and
        the index in it where the end marker starts, once it is there."""
        self._text = region
        out: list[CallDelta] = []
        end = self._advance(out)
        return out, end

    def finish(self, region: str) -> list[CallDelta]:
        """The region is complete: parse it whole, send the rest, check the stream.
        Raises ``ToolParseError`` when it is not a valid call."""
        self._text = region
        out: list[CallDelta] = []
        self._advance(out)
        try:
            parsed = _normalized(self.fmt.parse(region, self.tools))
        except ToolParseError:
            raise
        except Exception as exc:
            raise ToolParseError(f"{type(exc).__name__}: {exc}"[:300]) from exc
        if len(parsed) < len(self.calls):
            raise ToolParseError("the streamed calls do not match the parsed ones")
        for i, (name, arguments) in enumerate(parsed):
            call = self._call(i, out, name)
            if call.name != name:
                raise ToolParseError(f"the call {call.name!r} was read as {name!r}")
            if self._mode in ("params", "whole"):
                self._send_pairs(call, arguments, out)
                self._close(call, out)
            else:
                if call.pending:
                    self._send(call, "", out)
                try:
                    sent = json.loads(call.arguments) if call.arguments else None
                except ValueError:
                    sent = None
                if sent != arguments:
                    if call.arguments:
                        raise ToolParseError(f"the arguments of {name} are not valid JSON")
                    self._send(call, json.dumps(arguments, ensure_ascii=False), out)
        return out

    # --- streaming ----------------------------------------------------------------

    def _call(self, i: int, out: list[CallDelta], name: str | None = None) -> _Call:
        """The i-th call of the region, started (id and name sent) if new."""
        while len(self.calls) <= i:
            if self.calls and self._mode == "params":
                self._close(self.calls[-1], out)
            self.calls.append(_Call(self._first + len(self.calls)))
        call = self.calls[i]
        if call.name is None and name is not None:
            call.name = name
            out.append(CallDelta(call.index, new_call_id(), name))
            if call.pending:
                self._send(call, "", out)
        return call

    def _send(self, call: _Call, text: str, out: list[CallDelta]) -> None:
        if call.name is None:
            call.pending += text
            return
        text, call.pending = call.pending + text, ""
        if text:
            call.arguments += text
            out.append(CallDelta(call.index, arguments=text))

    def _send_pairs(self, call: _Call, arguments: dict[str, Any], out: list[CallDelta]) -> None:
        for key, value in arguments.items():
            if key in call.keys:
                if call.keys[key] != value:
                    raise ToolParseError(f"the argument {key!r} of {call.name} changed")
                continue
            call.keys[key] = value
            self._send(call, ("{" if len(call.keys) == 1 else ", ") + _pair(key, value), out)

    def _close(self, call: _Call, out: list[CallDelta]) -> None:
        if not call.closed:
            call.closed = True
            self._send(call, "}" if call.keys else "{}", out)

    def _advance(self, out: list[CallDelta]) -> int | None:
        if self._mode == "json":
            return self._advance_json(out)
        if self._mode == "header":
            return self._advance_header(out)
        end = self._marker_end()
        text = self._text if end is None else self._text[:end]
        if self._mode == "params":
            self._advance_params(text, out)
        else:
            self._advance_whole(text, out)
        return end

    def _marker_end(self) -> int | None:
        """Plain formats: the end marker's first occurrence (none: to the end)."""
        if not self.fmt.end:
            return None
        at = self._text.find(self.fmt.end)
        return None if at < 0 else at

    def _at_end_marker(self, i: int) -> bool | None:
        """True if the end marker starts at i; None if the text may still become it."""
        end = self.fmt.end
        if not end:
            return False
        rest = self._text[i : i + len(end)]
        if rest == end:
            return True
        return None if end.startswith(rest) and len(rest) < len(end) else False

    def _advance_json(self, out: list[CallDelta]) -> int | None:
        """``{"name": ..., "arguments": ...}`` objects, alone or in a JSON array."""
        text, scan = self._text, self._scan
        while self._pos < len(text):
            i = self._pos
            ch = text[i]
            if not scan.in_string and not scan.stack:
                marker = self._at_end_marker(i)
                if marker is None:
                    break  # perhaps the end marker: wait for more text
                if marker:
                    return i
            depth = len(scan.stack)
            value_string = not scan.in_string and ch == '"'
            closed_string = scan.step(ch, i)
            self._pos += 1
            if not self._call_level and ch in "{[" and depth == 0 and not scan.in_string:
                self._call_level = 1 if ch == "{" else 2
            level = self._call_level
            if not level or ch.isspace():
                continue
            if closed_string:
                if depth == level:  # not valid (None): the finish reports it
                    raw = _json_string(text[scan.string_start : i + 1])
                    if self._expect_key:
                        self._key, self._expect_key = raw, False
                    elif self._key == "name" and self._value_start == scan.string_start and raw:
                        self._call(len(self.calls) - 1, out, raw)
                continue
            if scan.in_string and not value_string:
                continue
            if ch == "{" and depth == level - 1:  # a call object opens
                self._call(len(self.calls), out)
                self._expect_key, self._key, self._value_start = True, None, -1
            elif ch == "}" and len(scan.stack) == level - 1 and self.calls:  # it closes
                self._end_value(i, out)
                self.calls[-1].closed = True
                self._key = None
            elif ch in "}]" and len(scan.stack) == level and self._args_from >= 0:
                self._send(self.calls[-1], text[self._args_from : i + 1], out)
                self._args_from = -1
            elif depth == level and ch == ",":
                self._end_value(i, out)
                self._expect_key, self._key, self._value_start = True, None, -1
            elif depth == level and ch != ":" and self._key is not None and self._value_start < 0:
                self._value_start = i  # a value at the call's level begins
                if self._key in ARG_KEYS and ch != '"':  # a JSON string: sent decoded, at the end
                    self._args_from = i
        if self._args_from >= 0 and self.calls:
            self._send(self.calls[-1], text[self._args_from : self._pos], out)
            self._args_from = self._pos
        return None

    def _end_value(self, i: int, out: list[CallDelta]) -> None:
        """A value at the call's level ended at ``i`` (a scalar's ``,`` or ``}``)."""
        if self._args_from >= 0:
            self._send(self.calls[-1], self._text[self._args_from : i].rstrip(), out)
        self._args_from = self._value_start = -1

    def _advance_header(self, out: list[CallDelta]) -> int | None:
        text, scan = self._text, self._scan
        if self._pos == 0 and self.fmt.name == "mistral":
            stripped = text.lstrip()
            if not stripped:
                return None
            if stripped[0] in "[{":  # Mistral's other form: a JSON list of calls
                self._mode = "json"
                return self._advance_json(out)
        while self._pos < len(text):
            if self._args_from < 0:  # between calls: the next header, before the end marker
                assert self.fmt.header is not None
                end = self._header_end_marker()
                stop = len(text) if end is None else end
                match = self.fmt.header.search(text, self._search_from, stop)
                if match is None or match.end() == len(text):
                    return end
                self._call(len(self.calls), out, match.group(1))
                self._pos = self._args_from = match.end()
            i = self._pos
            scan.step(text[i], i)
            self._pos += 1
            if not scan.stack and not scan.in_string:  # the arguments value closed
                self._send(self.calls[-1], text[self._args_from : self._pos], out)
                self.calls[-1].closed = True
                self._args_from = -1
                self._search_from = self._pos
        if self._args_from >= 0:
            self._send(self.calls[-1], text[self._args_from : self._pos], out)
            self._args_from = self._pos
        return None

    def _header_end_marker(self) -> int | None:
        if not self.fmt.end:
            return None
        at = self._text.find(self.fmt.end, self._search_from)
        return None if at < 0 else at

    def _advance_params(self, text: str, out: list[CallDelta]) -> None:
        assert self.fmt.header is not None
        cut = 0
        close = self.fmt.param_close
        at = text.rfind(close)
        if at >= 0:
            cut = at + len(close)
        headers = list(self.fmt.header.finditer(text))
        if headers:
            cut = max(cut, headers[-1].end())
        if cut <= self._cut:
            return
        self._cut = cut
        try:
            parsed = _normalized(self.fmt.parse(text[:cut] + self.fmt.call_close, self.tools))
        except Exception:
            return  # not readable yet: the finish will tell
        for i, (name, arguments) in enumerate(parsed):
            call = self._call(i, out, name)
            if call.name == name:
                try:
                    self._send_pairs(call, arguments, out)
                except ToolParseError:
                    return

    def _advance_whole(self, text: str, out: list[CallDelta]) -> None:
        assert self.fmt.header is not None
        for match in self.fmt.header.finditer(text, self._search_from):
            self._search_from = match.end()
            if not self._quoted(text, match.start()):  # not inside a string value
                self._call(len(self.calls), out, match.group(1))

    def _quoted(self, text: str, at: int) -> bool:
        """Whether ``at`` lies inside one of the format's string literals."""
        i, quote = self._quoted_to, self._quote
        while i < at:
            if quote is None:
                quote = next((q for q in self.fmt.quotes if text.startswith(q, i)), None)
                i += len(quote) if quote else 1
            elif len(quote) == 1 and text[i] == "\\":
                i += 2
            elif text.startswith(quote, i):
                i, quote = i + len(quote), None
            else:
                i += 1
        self._quoted_to, self._quote = i, quote
        return quote is not None
