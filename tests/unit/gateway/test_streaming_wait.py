"""A streaming request that waits for its model gets keep-alive comments, then its stream;
its concurrency slot is released on every path."""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import ModelNotReady
from gateway import generation
from gateway.errors import GatewayError

pytestmark = pytest.mark.anyio


class Session:
    prompt_tokens = completion_tokens = cached_tokens = reasoning_tokens = 0

    async def events(self, deadline=None):
        return
        yield

    def close(self) -> None:
        pass


class Admission:
    def __init__(self) -> None:
        self.released = 0
        self.recorded: list[tuple[int, int, int]] = []

    def release(self) -> None:
        self.released += 1

    async def record(self, prompt: int, completion: int, status: int) -> None:
        self.recorded.append((prompt, completion, status))

    def record_soon(self, prompt: int, completion: int, status: int) -> None:
        self.recorded.append((prompt, completion, status))


class Renderer:
    def opening(self, counts):
        return [b"open"]

    def output(self, item):
        return [item.text.encode()]

    def choice_end(self, end, counts):
        return [b"end"]

    def closing(self, counts):
        return [b"done"]

    def error(self, error: GatewayError):
        return f"error {error.code}".encode()

    def keepalive(self):
        return b": wait"


async def frames(opening, admission) -> list[bytes]:
    deadline = asyncio.get_running_loop().time() + 60
    body = generation._wait_then_frames(opening, admission, Renderer(), deadline)
    return [frame async for frame in body]


async def test_keep_alive_comments_are_sent_while_the_model_loads(monkeypatch):
    monkeypatch.setattr(generation, "KEEPALIVE_SECONDS", 0.01)
    admission = Admission()

    async def slow_open():
        await asyncio.sleep(0.05)
        return Session()

    out = await frames(slow_open, admission)
    assert out[0] == b": wait"
    assert out[-2:] == [b"open", b"done"]
    assert admission.recorded == [(0, 0, 200)]
    assert admission.released >= 1


async def test_a_wait_that_fails_ends_the_stream_with_an_error_event(monkeypatch):
    monkeypatch.setattr(generation, "KEEPALIVE_SECONDS", 0.01)
    admission = Admission()

    async def failing_open():
        await asyncio.sleep(0.02)
        raise ModelNotReady("model x is not ready (x is loading)", retry_after=3)

    out = await frames(failing_open, admission)
    assert out[-1] == b"error model_loading"
    assert admission.released >= 1


async def test_client_leaving_during_the_wait_releases_the_slot(monkeypatch):
    monkeypatch.setattr(generation, "KEEPALIVE_SECONDS", 0.01)
    admission = Admission()
    opened = asyncio.Event()

    async def never_open():
        opened.set()
        await asyncio.sleep(3600)

    deadline = asyncio.get_running_loop().time() + 60
    body = generation._wait_then_frames(never_open, admission, Renderer(), deadline)
    assert await anext(body) == b": wait"
    await body.aclose()
    assert admission.released >= 1
