"""A queue served round-robin across callers, FIFO within one caller.

When a model is saturated its waiting requests are served one per caller in
turn, so one caller's burst cannot starve the others.  The caller tag is
opaque to the engine (the gateway passes a key id).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._callers: OrderedDict[str, deque[T]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[T]:
        for items in self._callers.values():
            yield from items

    def push(self, caller: str, item: T) -> None:
        self._callers.setdefault(caller, deque()).append(item)
        self._size += 1

    def peek(self) -> T:
        """The item ``pop`` would return, left in place."""
        return next(iter(self._callers.values()))[0]

    def pop(self) -> T:
        """The next item: the first caller in turn gives its oldest, then goes last."""
        caller, items = next(iter(self._callers.items()))
        item = items.popleft()
        del self._callers[caller]
        if items:
            self._callers[caller] = items
        self._size -= 1
        return item

    def remove(self, item: T) -> bool:
        for caller, items in self._callers.items():
            if item in items:
                items.remove(item)
                if not items:
                    del self._callers[caller]
                self._size -= 1
                return True
        return False
