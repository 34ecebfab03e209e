"""Ollama's model routes: ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/pull``,
``DELETE /api/delete``, ``/api/version`` and ``HEAD /``.

Each lists or touches only what the key may use: its allowlist filters every
list, and a model outside it is "not found" exactly like one that does not
exist.  ``/api/pull`` downloads under every rule of SPEC.md section 2 step 7
(the same checks as a request that names a hub model: downloads enabled, the
operator's repo allowlist, the key's scopes, sizes from the hub's metadata
against the disk budget and the key's quota), all before the first byte, and
then streams Ollama's progress objects; a refusal is an HTTP error with
nothing fetched.  ``/api/delete`` is an admin's.  The routes Ollama has for
building and sharing models (create, push, copy, blobs) and embeddings answer
501 in Ollama's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, delete, get, post, route
from litestar.response import Stream

from engine.downloads import DownloadJob, JobState
from engine.model_facts import ModelFacts, facts_of
from engine.protocol import SamplingParams
from engine.registry import ModelState, ModelStatus
from engine.store import ModelSpec
from gateway import pipeline
from gateway.admission import background
from gateway.auth import principal_of, require_admin
from gateway.context import AppContext
from gateway.errors import InvalidRequest, ModelNotFound, ModelUnavailable, NotSupported
from gateway.hub import finished
from gateway.ollama_codec import (
    DEFAULT_REPEAT_LAST_N,
    DEFAULT_REPEAT_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    iso,
    model_id_of,
    tagged,
)
from gateway.ollama_schema import ModelRequest
from gateway.pipeline import Ask, context
from gateway.responses import decode_body, ollama_body
from gateway.routes.admin import remove_model
from gateway.routes.ollama import NDJSON, line
from policies.allowlist import model_allowed

OLLAMA_VERSION = "0.13.0"  # the Ollama API these routes follow
FOREVER = "9999-12-31T23:59:59Z"
PROGRESS_SECONDS = 0.5


def details(facts: ModelFacts) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": facts.format,
        "family": facts.family,
        "families": list(facts.families),
        "parameter_size": facts.parameter_size,
        "quantization_level": facts.quantization_level,
    }


def _not_found(name: str) -> ModelNotFound:
    """The words of every API's 404 for a model (absent and forbidden alike)."""
    return ModelNotFound(
        f"The model `{name[:80]}` does not exist or you do not have access to it.",
        param="model",
    )


def _local_model(ctx: AppContext, request: Request, name: str) -> ModelSpec:
    """A model on disk that this key may use; anything else is 404 (a model outside
    the allowlist looks exactly like one that does not exist)."""
    spec = ctx.resolve_model(model_id_of(name))
    if (
        ctx.store.specs.get(spec.id) is not spec
        or not spec.on_disk
        or not model_allowed(principal_of(request), spec.id)
    ):
        raise _not_found(name)
    return spec


def _name_of(req: ModelRequest) -> str:
    name = req.model_name()
    if not name:
        raise InvalidRequest("`model` is required.", param="model")
    return name


async def _facts(specs: list[ModelSpec]) -> list[tuple[ModelSpec, ModelFacts]]:
    """The models' facts, read off the event loop; a model whose files cannot be
    read is left out (its load would report why)."""

    def read() -> list[tuple[ModelSpec, ModelFacts]]:
        out = []
        for spec in specs:
            try:
                out.append((spec, facts_of(spec.path)))
            except (OSError, ValueError):
                continue
        return out

    return await asyncio.to_thread(read)


@get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    """The models on disk this key may use."""
    ctx = context(request)
    principal = principal_of(request)
    specs = [s for s in ctx.store.all() if s.on_disk and model_allowed(principal, s.id)]
    return {
        "models": [
            {
                "name": tagged(spec.id),
                "model": tagged(spec.id),
                "modified_at": iso(facts.modified_at),
                "size": facts.size_bytes,
                "digest": facts.digest,
                "details": details(facts),
            }
            for spec, facts in await _facts(specs)
        ]
    }


def expires_at(status: ModelStatus, now: float, exact: bool) -> str:
    """When the model will be unloaded if nobody uses it again.  Only an admin sees
    the exact time: it moves whenever anyone's request ends, so it would tell one key
    when others use the model; any other key sees the keep-alive counted from now."""
    keep = status.keep_alive
    if keep is None or keep < 0 or not math.isfinite(keep):
        return FOREVER
    idle = (status.idle_seconds or 0.0) if exact else 0.0
    return iso(now - idle + keep)


@get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    """The loaded models this key may use, with their memory and when they expire."""
    ctx = context(request)
    principal = principal_of(request)
    loaded = []
    for spec in ctx.store.all():
        status = ctx.registry.status(spec.id)
        if status.state is ModelState.READY and model_allowed(principal, spec.id):
            loaded.append((spec, status))
    facts = dict(await _facts([spec for spec, _ in loaded]))
    now = time.time()
    models = []
    for spec, status in loaded:
        if spec not in facts:
            continue
        memory = status.memory_bytes or status.need_bytes or 0
        models.append(
            {
                "name": tagged(spec.id),
                "model": tagged(spec.id),
                "size": memory,
                "digest": facts[spec].digest,
                "details": details(facts[spec]),
                "expires_at": expires_at(status, now, exact=principal.has("admin")),
                "size_vram": memory,
                "context_length": spec.serving_context_length(),
            }
        )
    return {"models": models}


def _parameters() -> str:
    """The sampling defaults the Ollama routes apply, as a Modelfile's PARAMETER lines."""
    return "\n".join(
        f"{name:<15} {value}"
        for name, value in (
            ("temperature", DEFAULT_TEMPERATURE),
            ("top_k", DEFAULT_TOP_K),
            ("top_p", DEFAULT_TOP_P),
            ("repeat_penalty", DEFAULT_REPEAT_PENALTY),
            ("repeat_last_n", DEFAULT_REPEAT_LAST_N),
        )
    )


@post("/api/show", status_code=200)
async def show(request: Request) -> dict[str, Any]:
    ctx = context(request)
    name = _name_of(decode_body(await request.body(), ModelRequest))
    spec = _local_model(ctx, request, name)
    found = await _facts([spec])
    if not found:
        raise ModelUnavailable(f"{spec.id}'s files cannot be read.")
    facts = found[0][1]
    arch = facts.family
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.parameter_count": facts.parameter_count,
        f"{arch}.context_length": spec.serving_context_length() or facts.context_length,
        f"{arch}.embedding_length": facts.embedding_length,
        f"{arch}.block_count": facts.block_count,
        f"{arch}.attention.head_count": facts.head_count,
        f"{arch}.attention.head_count_kv": facts.head_count_kv,
        f"{arch}.vocab_size": facts.vocab_size,
    }
    parameters = _parameters()
    return {
        "license": "",
        "modelfile": (
            f"# Served by mlx-gateway from its catalogue\nFROM {spec.id}\n"
            + "".join(f"PARAMETER {p}\n" for p in parameters.splitlines())
        ),
        "parameters": parameters,
        "template": facts.chat_template or "",
        "details": details(facts),
        "model_info": {k: v for k, v in info.items() if v is not None},
        "capabilities": list(facts.capabilities),
        "modified_at": iso(facts.modified_at),
    }


def _progress(job: DownloadJob) -> dict[str, Any]:
    return {
        "status": f"pulling {job.plan.commit[:12]}",
        "digest": f"sha256:{job.plan.commit}",
        "total": job.plan.total_bytes,
        "completed": job.bytes_done,
    }


async def _pull_lines(
    job: DownloadJob, admission_release: Any, ctx: AppContext, spec: ModelSpec
) -> AsyncIterator[bytes]:
    try:
        yield line({"status": "pulling manifest"})
        last: tuple[int, float] | None = None
        while not job.done.is_set():
            now = time.monotonic()
            if last is None or job.bytes_done != last[0] or now - last[1] > 5:
                last = (job.bytes_done, now)
                yield line(_progress(job))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(job.done.wait()), PROGRESS_SECONDS)
        if job.state is not JobState.DONE:
            yield line({"error": f"the download of {job.plan.repo} failed: {job.error}"})
            return
        yield line(_progress(job))
        finished(ctx, spec, job)
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            yield line({"status": status})
    finally:
        admission_release()


@post("/api/pull", status_code=200)
async def pull(request: Request) -> Response[Any] | Stream:
    """Download a hub model under every download rule; Ollama's progress objects.

    The checks are ``pipeline.admit_pull``'s, in the pipeline's order: a refused
    pull consumes nothing, and a key its limits refuse asks the hub nothing."""
    ctx = context(request)
    req = decode_body(await request.body(), ModelRequest)
    ask = Ask("/api/pull", model_id_of(_name_of(req)), SamplingParams(max_tokens=0))
    spec, admission, job = await pipeline.admit_pull(request, ask)
    try:
        await admission.record(0, 0, 200)
    except BaseException:
        admission.release()
        raise
    if job is None:  # on disk already
        admission.release()
        if not req.stream:
            return Response({"status": "success"})
        lines = [line({"status": s}) for s in ("pulling manifest", "success")]
        return Response(b"".join(lines), media_type=NDJSON)

    async def register() -> None:  # the model joins the catalogue even if the client left
        await job.done.wait()
        if job.state is JobState.DONE:
            finished(ctx, spec, job)

    background(register())
    if req.stream:
        return Stream(_pull_lines(job, admission.release, ctx, spec), media_type=NDJSON)
    try:
        await job.done.wait()
    finally:
        admission.release()
    if job.state is not JobState.DONE:
        raise ModelUnavailable(f"the download of {job.plan.repo} failed: {job.error}")
    return Response({"status": "success"})


@delete("/api/delete", status_code=200, guards=[require_admin])
async def remove(request: Request) -> Response[None]:
    """Delete a model's files (an admin's; a loaded model is drained first)."""
    ctx = context(request)
    name = _name_of(decode_body(await request.body(), ModelRequest))
    spec = _local_model(ctx, request, name)
    await remove_model(ctx, spec, force=True)
    return Response(None, status_code=200)


@get("/api/version")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION}


@route("/", http_method=["GET", "HEAD"], status_code=200)
async def root() -> Response[str]:
    """Ollama's liveness answer (no key needed; it says nothing else)."""
    return Response("Ollama is running", media_type="text/plain")


UNSUPPORTED = {
    "create": "creating models (the operator's catalogue and the hub supply them)",
    "push": "pushing models",
    "copy": "copying models (the operator's catalogue names them; ask for an alias)",
    "blobs": "model blobs",
    "embed": "embeddings",
    "embeddings": "embeddings",
}


@route(
    ["/api/create", "/api/push", "/api/copy", "/api/embed", "/api/embeddings"],
    http_method=["POST"],
)
async def unsupported(request: Request) -> None:
    what = UNSUPPORTED[request.url.path.rsplit("/", 1)[-1]]
    raise NotSupported(f"This gateway does not support {what}.")


@route("/api/blobs/{digest:str}", http_method=["HEAD", "POST"])
async def blobs(digest: str) -> None:
    raise NotSupported(f"This gateway does not support {UNSUPPORTED['blobs']}.")


__all__ = ["blobs", "ollama_body", "ps", "pull", "remove", "root", "show", "tags"]
