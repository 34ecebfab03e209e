"""Operator endpoints over the registry: see every model, load and unload them.

Authentication arrives with the key store (the ``admin`` scope); until then
these routes are as open as the rest of the gateway, which binds to loopback.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post

from engine.errors import EngineError
from engine.registry import ModelStatus
from gateway.auth import require_admin
from gateway.context import AppContext
from gateway.errors import RouteNotFound
from gateway.responses import from_engine


class WaitingView(msgspec.Struct, frozen=True):
    caller: str
    waited_seconds: float
    reason: str


class ModelView(msgspec.Struct, frozen=True):
    id: str
    state: str
    pinned: bool
    need_bytes: int | None
    memory_bytes: int
    leases: int
    queued: int
    idle_seconds: float | None
    resident_seconds: float | None
    load_seconds: float | None
    error: str | None
    loads: int
    pid: int | None
    waiting: list[WaitingView]


class ModelsView(msgspec.Struct, frozen=True):
    data: list[ModelView]
    memory_budget_bytes: int
    memory_used_bytes: int
    wedged: bool


def view(status: ModelStatus) -> ModelView:
    return ModelView(
        id=status.id,
        state=status.state.value,
        pinned=status.pinned,
        need_bytes=status.need_bytes,
        memory_bytes=status.memory_bytes,
        leases=status.leases,
        queued=status.queued,
        idle_seconds=status.idle_seconds,
        resident_seconds=status.resident_seconds,
        load_seconds=status.load_seconds,
        error=status.error,
        loads=status.loads,
        pid=status.pid,
        waiting=[WaitingView(w.caller, round(w.waited, 3), w.reason) for w in status.waiting],
    )


def context(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


@get("/admin/models", guards=[require_admin])
async def admin_models(request: Request) -> ModelsView:
    registry = context(request).registry
    return ModelsView(
        [view(s) for s in registry.statuses()],
        registry.memory_budget,
        registry.memory_used,
        registry.wedged,
    )


@get("/admin/models/{model_id:path}", guards=[require_admin])
async def admin_model(request: Request, model_id: str) -> ModelView:
    ctx = context(request)
    spec = ctx.resolve_model(model_id.lstrip("/"))
    return view(ctx.registry.status(spec.id))


def accepted(spec_id: str, ctx: AppContext) -> Response[Any]:
    url = f"/admin/models/{spec_id}"
    body = {"id": spec_id, "state": ctx.registry.status(spec_id).state.value, "status_url": url}
    return Response(body, status_code=202, headers={"Location": url})


@post("/admin/models/{target:path}", status_code=202, guards=[require_admin])
async def admin_action(request: Request, target: str) -> Response[Any]:
    """``POST /admin/models/{id}/load`` and ``POST /admin/models/{id}/unload``.

    Model ids may contain slashes (``org/name``), so the action is the last segment.
    """
    ctx = context(request)
    model_id, _, action = target.strip("/").rpartition("/")
    if action not in ("load", "unload") or not model_id:
        raise RouteNotFound("No such route: use /admin/models/{id}/load or /unload.")
    spec = ctx.resolve_model(model_id)
    try:
        if action == "load":
            ctx.registry.request_load(spec.id)
        else:
            ctx.registry.request_unload(spec.id)
    except EngineError as exc:
        raise from_engine(exc) from exc
    return accepted(spec.id, ctx)
