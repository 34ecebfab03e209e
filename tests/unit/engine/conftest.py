"""Fixtures for the registry's tests: fake workers, a fake clock, fake-sized models.

Models are fake directories whose safetensors headers declare their size, so
"4 GB" models cost nothing.  The watchdog is off (``tick=0``): tests call
``check_deadlines`` after moving the clock, and ``settle`` to let the loads,
unloads and admissions that are ready run (events, not sleeps).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from engine.registry import Registry, RegistryConfig
from engine.store import ModelSpec, ModelStore
from tests.support.fake_models import fake_model_dir
from tests.support.fake_worker import FakeWorkers

GB = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def workers() -> FakeWorkers:
    return FakeWorkers()


@pytest.fixture
def make(tmp_path, clock, workers) -> Callable[..., Registry]:
    """make(sizes={'a': 4, ...}, budget=10, **config) -> Registry (sizes in GB)."""

    def build(sizes=None, *, budget=10, pinned=(), keep_alive=None, **config) -> Registry:
        store = ModelStore()
        for name, size in (sizes or {"a": 4, "b": 4, "c": 4}).items():
            path = fake_model_dir(tmp_path / name, int(size * GB))
            store.add(
                ModelSpec(
                    name,
                    path,
                    pinned=name in pinned,
                    keep_alive=(keep_alive or {}).get(name),
                )
            )
        defaults = dict(
            memory_budget=int(budget * GB),
            worker_overhead=0,
            min_residency=0.0,
            load_wait=5.0,
            tick=0,
        )
        return Registry(store, RegistryConfig(**(defaults | config)), spawn=workers, clock=clock)

    return build


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
def settle() -> Callable[[], Awaitable[None]]:
    """Let every ready task run (loads, unloads, admissions) until nothing moves."""
    return _settle
