"""``/health`` (the process answers) and ``/ready`` (the default model can serve, and the
stores of keys, usage and counters answer)."""

from __future__ import annotations

import asyncio

from litestar import Request, Response, get

from engine.registry import ModelState
from gateway.context import AppContext


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready")
async def ready(request: Request) -> Response[dict[str, str]]:
    ctx: AppContext = request.app.state.ctx
    if ctx.registry.wedged:
        return Response(
            {"status": "not_ready", "reason": "the model scheduler is not making progress"},
            status_code=503,
        )
    if (why := await asyncio.to_thread(_stores_unavailable, ctx)) is not None:
        return Response({"status": "not_ready", "reason": why}, status_code=503)
    default = ctx.store.resolve("default")
    if default is None:
        return Response({"status": "not_ready", "reason": "no default model"}, status_code=503)
    status = ctx.registry.status(default.id)
    if status.state is ModelState.READY:
        return Response({"status": "ready", "model": default.id})
    body = {"status": "not_ready", "model": default.id, "state": status.state.value}
    if status.error:
        body["reason"] = status.error
    return Response(body, status_code=503)


def _stores_unavailable(ctx: AppContext) -> str | None:
    """Why a shared store cannot be reached (on a worker thread: it may ask the network)."""
    for store in (ctx.keys, ctx.counters):
        why = store.unavailable() if store is not None else None
        if why is not None:
            return why
    return None
