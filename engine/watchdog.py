"""The registry's watchdog: a task that checks deadlines every ``tick`` seconds.

If it stops ticking (the event loop is blocked, or the task died), ``wedged``
turns true and ``/ready`` answers 503: states are no longer being resolved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("engine.registry")


class Watchdog:
    def __init__(self, check: Callable[[], None], tick: float, clock: Callable[[], float]) -> None:
        self._check = check
        self._tick = tick
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._last_tick: float | None = None

    def ensure(self) -> None:
        """Start ticking unless already started (``tick = 0`` leaves it to the caller: tests)."""
        if self._task is None and self._tick > 0:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    @property
    def wedged(self) -> bool:
        """True when the watchdog has not run for a long time."""
        if self._task is None or self._last_tick is None:
            return False
        return self._clock() - self._last_tick > max(5.0, 20 * self._tick)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            self._last_tick = self._clock()
            try:
                self._check()
            except Exception:
                log.exception("registry watchdog failed")
            await asyncio.sleep(self._tick)
