"""Stop strings matched on generated text, not on tokens.

A stop string may span several tokens, or end in the middle of one.  The
matcher therefore holds back any tail of the text that could still become a
stop string, releases it once it cannot, and on a match releases only the text
before the stop.  Pure logic: no MLX, no I/O.
"""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces in order; get back the text that is safe to emit."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Add generated text; return what may be emitted now.

        After a match, ``matched`` holds the stop string and further text is
        ignored.
        """
        if self.matched is not None:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        first: tuple[int, str] | None = None
        for stop in self._stops:
            at = buffer.find(stop)
            if at != -1 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            self.matched = first[1]
            self._held = ""
            return buffer[: first[0]]
        keep = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The generation ended: release whatever was held back."""
        held, self._held = self._held, ""
        return "" if self.matched is not None else held

    def _partial_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest
