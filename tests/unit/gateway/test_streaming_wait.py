"""A streaming request that waits for its model gets keep-alive comments, then its stream."""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import ModelNotReady
from gateway.routes import openai as routes

pytestmark = pytest.mark.anyio


class Session:
    prompt_tokens = completion_tokens = cached_tokens = 0

    async def events(self):
        return
        yield

    def close(self) -> None:
        pass


async def collect(opening) -> list[bytes]:
    frames = routes.wait_then_stream(opening, [b"data: first\n\n"], lambda *a: {}, None)
    return [frame async for frame in frames]


async def test_keep_alive_comments_are_sent_while_the_model_loads(monkeypatch):
    monkeypatch.setattr(routes, "KEEPALIVE_SECONDS", 0.01)

    async def slow_open():
        await asyncio.sleep(0.05)
        return Session()

    frames = await collect(slow_open)
    assert frames[0].startswith(b": ")
    assert frames[-2:] == [b"data: first\n\n", b"data: [DONE]\n\n"]


async def test_a_wait_that_fails_ends_the_stream_with_an_error_event(monkeypatch):
    monkeypatch.setattr(routes, "KEEPALIVE_SECONDS", 0.01)

    async def failing_open():
        await asyncio.sleep(0.02)
        raise ModelNotReady("model x is not ready (x is loading)", retry_after=3)

    frames = await collect(failing_open)
    assert frames[-1].startswith(b'data: {"error":')
    assert b"model_loading" in frames[-1]
