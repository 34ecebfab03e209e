"""Operator endpoints over the registry (``admin`` scope): see every model, load,
unload, pull and remove them.

A model id in a path is checked like a request's: 400 when malformed, 404 when
the catalogue does not hold it (a hub repo id that is not downloaded yet is
known only to ``/pull``), before the registry is asked anything.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post

from engine.downloads import DownloadJob, JobState
from engine.errors import EngineError
from engine.registry import ModelState, ModelStatus
from engine.states import Serving
from engine.store import ModelSpec
from gateway.admission import background
from gateway.auth import principal_of, require_admin
from gateway.context import AppContext
from gateway.errors import GatewayError, InvalidRequest, PermissionDenied, RouteNotFound
from gateway.hub import finished, start_download
from gateway.responses import from_engine
from gateway.routes.models import known_model
from policies.principal import Principal


class WaitingView(msgspec.Struct, frozen=True):
    caller: str
    waited_seconds: float
    reason: str


class ServingView(msgspec.Struct, frozen=True):
    """How a ready model serves: its decoding mode and why, the batch, the prompts
    being prefilled, the KV cache reserved and used, the longest decode pause."""

    decoding: str
    decoding_reason: str
    batch_size: int
    prefilling: int
    waiting_for_kv: int
    kv_budget_tokens: int
    kv_reserved_tokens: int
    kv_used_bytes: int
    longest_decode_pause_seconds: float


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
    serving: ServingView | None


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
        serving=serving_view(status.serving),
    )


def serving_view(s: Serving | None) -> ServingView | None:
    if s is None:
        return None
    return ServingView(
        s.decoding,
        s.decoding_reason,
        s.batch,
        s.prefilling,
        s.waiting,
        s.kv_budget_tokens,
        s.kv_reserved_tokens,
        s.kv_used_bytes,
        round(s.longest_pause, 3),
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
    spec = known_model(ctx, model_id.lstrip("/"))
    return view(ctx.registry.status(spec.id))


class JobView(msgspec.Struct, frozen=True):
    id: str
    repo: str
    revision: str
    commit: str
    state: str
    bytes_done: int
    bytes_total: int
    bytes_per_second: float
    eta_seconds: float | None
    error: str | None
    files: list[str]


def job_view(job: DownloadJob) -> JobView:
    plan = job.plan
    return JobView(
        job.id,
        plan.repo,
        plan.revision,
        plan.commit,
        job.state.value,
        job.bytes_done,
        plan.total_bytes,
        round(job.bytes_per_second, 1),
        job.eta_seconds,
        job.error,
        [f.path for f in plan.files],
    )


async def pull(ctx: AppContext, principal: Principal, spec: ModelSpec) -> Response[Any]:
    """Start (or join) the download of a hub model: 202 and where to poll."""
    if spec.repo is None:
        raise InvalidRequest(f"{spec.id} is a local model; there is nothing to pull.")
    if spec.on_disk:
        return Response({"id": spec.id, "state": "on_disk"}, status_code=200)
    if ctx.downloader is None:
        raise PermissionDenied("Downloading models is disabled.", code="download_not_allowed")
    job = await start_download(ctx, principal, spec.repo, spec.revision or "main")

    async def register() -> None:
        await job.done.wait()
        if job.state is JobState.DONE:
            finished(ctx, spec, job)

    background(register())
    url = f"/admin/jobs/{job.id}"
    body = {"job": msgspec.to_builtins(job_view(job)), "status_url": url}
    return Response(body, status_code=202, headers={"Location": url})


def job_of(ctx: AppContext, job_id: str) -> DownloadJob:
    job = ctx.downloader.jobs.get(job_id) if ctx.downloader else None
    if job is None:
        raise RouteNotFound("No such job.", code="job_not_found")
    return job


@get("/admin/jobs/{job_id:str}", guards=[require_admin])
async def admin_job(request: Request, job_id: str) -> JobView:
    return job_view(job_of(context(request), job_id))


@post("/admin/jobs/{job_id:str}/cancel", status_code=200, guards=[require_admin])
async def admin_cancel_job(request: Request, job_id: str) -> JobView:
    ctx = context(request)
    job = job_of(ctx, job_id)
    assert ctx.downloader is not None
    ctx.downloader.cancel(job.id)
    await asyncio.wait_for(job.done.wait(), 30)
    return job_view(job)


class ModelBusy(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "model_loaded"


@delete("/admin/models/{model_id:path}", status_code=200, guards=[require_admin])
async def admin_remove(request: Request, model_id: str, force: bool = False) -> dict[str, Any]:
    """Delete a model's files.  A loaded model is refused (409) unless ``force=true``,
    which drains it first (its in-flight requests finish)."""
    ctx = context(request)
    spec = known_model(ctx, model_id.lstrip("/"))
    return await remove_model(ctx, spec, force=force)


async def remove_model(ctx: AppContext, spec: ModelSpec, *, force: bool) -> dict[str, Any]:
    """Delete ``spec``'s files (a loaded one only with ``force``: drained first)."""
    if not spec.on_disk:
        raise RouteNotFound(f"{spec.id} has no files on disk.", code="model_not_on_disk")
    state = ctx.registry.status(spec.id).state
    if state is not ModelState.ABSENT and state is not ModelState.FAILED:
        if not force:
            raise ModelBusy(f"{spec.id} is {state.value}; unload it or pass force=true.")
        ctx.registry.request_unload(spec.id)
        deadline = time.monotonic() + ctx.settings.engine.drain_timeout + 30
        while ctx.registry.status(spec.id).state not in (ModelState.ABSENT, ModelState.FAILED):
            if time.monotonic() > deadline:
                raise ModelBusy(f"{spec.id} did not unload in time.")
            await asyncio.sleep(0.1)
    target = spec.path.parent.parent if spec.repo else spec.path
    await asyncio.to_thread(shutil.rmtree, target)
    return {"id": spec.id, "removed": str(target)}


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
    if action not in ("load", "unload", "pull") or not model_id:
        raise RouteNotFound("No such route: use /admin/models/{id}/load, /unload or /pull.")
    if action == "pull":
        return await pull(ctx, principal_of(request), ctx.resolve_model(model_id))
    spec = model_action(ctx, model_id, action)
    return accepted(spec.id, ctx)


def model_action(ctx: AppContext, model_id: str, action: str) -> ModelSpec:
    """Ask the registry to load or unload a catalogue model (the API's and the console's)."""
    spec = known_model(ctx, model_id)
    try:
        if action == "load":
            ctx.registry.request_load(spec.id)
        else:
            ctx.registry.request_unload(spec.id)
    except EngineError as exc:
        raise from_engine(exc) from exc
    return spec
