"""``/health`` (the process answers) and ``/ready`` (the default model can serve)."""

from __future__ import annotations

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
