"""An instant OpenAI-compatible upstream for benchmarks: a fixed answer, no model.

Run from the repository root::

    .venv/bin/python bench/fake_upstream.py --port 8999 [--host 127.0.0.1]

A minimal ASGI app served by uvicorn (no access log).  ``POST
/v1/chat/completions`` (and ``/chat/completions``) answers at once with the same
non-streaming ``chat.completion`` JSON whatever was asked, after reading the
request body; ``GET /health`` and ``GET /v1/models`` answer 200; anything else
404.  ``bench/policy.py`` measures a proxy against it: whatever time a request
takes beyond a direct request to this server is the proxy's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

MODEL = "fake-model"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


COMPLETION = _json(
    {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi"},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
    }
)
MODELS = _json(
    {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "bench"}],
    }
)
HEALTH = _json({"status": "ok"})
NOT_FOUND = _json({"error": {"message": "not found", "type": "invalid_request_error"}})

ROUTES: dict[tuple[str, str], bytes] = {
    ("POST", "/v1/chat/completions"): COMPLETION,
    ("POST", "/chat/completions"): COMPLETION,
    ("GET", "/v1/models"): MODELS,
    ("GET", "/models"): MODELS,
    ("GET", "/health"): HEALTH,
}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # read (and drop) the whole request body, as a real server would
        message = await receive()
        more = message.get("more_body", False)
    body = ROUTES.get((scope["method"], scope["path"]))
    status = 200 if body is not None else 404
    body = body if body is not None else NOT_FOUND
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
