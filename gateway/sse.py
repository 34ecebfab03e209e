"""Server-sent events exactly as OpenAI frames them."""

from __future__ import annotations

from typing import Any

import msgspec

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"

_encoder = msgspec.json.Encoder()


def event(payload: Any) -> bytes:
    return b"data: " + _encoder.encode(payload) + b"\n\n"
