"""Hub models: metadata first, every check, then a download that holds its bytes.

The order is SPEC.md section 2, steps 4 to 7.  ``check_gate`` needs no I/O:
the key's allowlist and scopes (a download is always followed by a load, so
``infer``, ``load`` and ``download``), downloads enabled, the repo in the
operator's allowlist.  Only then is the hub asked for metadata
(``fetch_hub_plan``: the file list and sizes; ``fetch_hub_need``: the model's
``config.json``, read into memory, bounded, never into the cache), so that
the memory need and every limit are decided before the first weight byte.
``begin_download`` checks ``max_model_size``, the key's daily quota and the
disk budget against what running downloads already hold, and starts (or
joins) the job in the same synchronous step: the job's declared bytes are
reserved until it ends, and a hub that under-reports is stopped at the quota
and the budget (``engine.ledger``).  A request waits up to ``load_wait`` for
the download, then gets 503 ``model_loading`` with the job's progress.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from engine.downloads import (
    DiskBudget,
    Downloader,
    DownloadError,
    DownloadJob,
    DownloadPlan,
    JobState,
    directory_bytes,
    fetch_plan,
    free_space,
)
from engine.memory import MemoryEstimateError, MemoryNeed, format_bytes, need_of
from engine.store import ModelSpec
from gateway.catalogue import cache_dir
from gateway.context import AppContext
from gateway.errors import (
    InsufficientStorage,
    InvalidRequest,
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
    PermissionDenied,
)
from gateway.http_errors import from_denial
from gateway.settings import DownloadSettings, Settings, parse_size
from policies.allowlist import model_allowed
from policies.decision import Deny
from policies.evaluate import evaluate_download
from policies.principal import Principal
from policies.usage import UsageSnapshot

CONFIG_LIMIT = 1024 * 1024  # the most of a config.json that is read


def make_downloader(
    settings: Settings,
    on_bytes: Callable[[str, int], None] | None = None,
    on_finished: Callable[[DownloadJob], None] | None = None,
) -> Downloader:
    root = cache_dir(settings)
    config = settings.downloads
    disk = DiskBudget(
        budget=parse_size(config.disk_budget, "downloads.disk_budget"),
        min_free=parse_size(config.min_free, "downloads.min_free"),
        used=lambda: directory_bytes(root),
        free=lambda: free_space(root),
    )
    return Downloader(root, disk, on_bytes=on_bytes, on_finished=on_finished)


def repo_allowed(config: DownloadSettings, repo: str) -> bool:
    return any(fnmatch.fnmatchcase(repo, pattern) for pattern in config.allow)


def snapshot_path(root: Path, plan: DownloadPlan) -> Path:
    return root / ("models--" + plan.repo.replace("/", "--")) / "snapshots" / plan.commit


def _key_usage(ctx: AppContext, principal: Principal, now: float) -> UsageSnapshot:
    """The key's usage with its download bytes as the downloader holds them now."""
    usage = ctx.counters.snapshot(principal.key_id, now)
    assert ctx.downloader is not None
    held = ctx.downloader.key_used(principal.key_id, usage.download_bytes_today)
    return replace(usage, download_bytes_today=held)


def check_download(
    ctx: AppContext,
    principal: Principal,
    repo: str,
    size: int,
    *,
    now: float,
    room: int = 1,
) -> None:
    """Raise the first download denial (``size`` 0: before the hub is asked anything;
    ``room``: what the disk can still take, from ``Downloader.room``)."""
    if not model_allowed(principal, repo):
        raise PermissionDenied(
            f"This key may not use the model {repo}.", code="model_not_allowed", param="model"
        )
    for scope in ("infer", "load"):
        if not principal.has(scope):
            raise PermissionDenied(
                f"{repo} is not on disk; downloading and loading it needs the `{scope}` scope,"
                " which this key lacks.",
                code="missing_scope",
                param=scope,
            )
    config = ctx.settings.downloads
    if ctx.downloader is None:
        raise PermissionDenied(
            "Downloading models is disabled on this gateway.", code="download_not_allowed"
        )
    usage = _key_usage(ctx, principal, now)
    decision = evaluate_download(
        principal,
        repo_allowed(config, repo),
        config.enabled,
        size,
        room if size else 1,
        usage,
        now,
        repo_id=repo,
    )
    if isinstance(decision, Deny):
        raise from_denial(decision)
    limit = parse_size(config.max_model_size, "downloads.max_model_size")
    if size > limit:
        raise InsufficientStorage(
            f"{repo} is {format_bytes(size)}; the largest model this gateway downloads is "
            f"{format_bytes(limit)} (downloads.max_model_size).",
            code="insufficient_storage",
            param="model",
        )


def check_gate(ctx: AppContext, principal: Principal, repo: str) -> None:
    """Every download check that needs no I/O (before the hub is asked anything)."""
    check_download(ctx, principal, repo, 0, now=time.time())


async def fetch_hub_plan(ctx: AppContext, repo: str, revision: str) -> DownloadPlan:
    """The repo's files and sizes from the hub's metadata (no file byte fetched)."""
    try:
        return await asyncio.to_thread(fetch_plan, repo, revision)
    except DownloadError as exc:
        if exc.missing:
            raise ModelNotFound(
                f"The model `{repo}` does not exist or you do not have access to it.",
                param="model",
            ) from exc
        raise ModelUnavailable(str(exc), code="download_failed", retry_after=5) from exc


def _read_config(plan: DownloadPlan) -> dict[str, object]:
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    url = hf_hub_url(plan.repo, "config.json", revision=plan.commit, endpoint=constants.ENDPOINT)
    body = b""
    with get_session().stream(
        "GET", url, headers=build_hf_headers(), follow_redirects=True, timeout=10
    ) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > CONFIG_LIMIT:
                raise MemoryEstimateError("config.json is larger than 1 MiB")
    config = json.loads(body)
    if not isinstance(config, dict):
        raise MemoryEstimateError("config.json is not an object")
    return config


async def fetch_hub_need(ctx: AppContext, spec: ModelSpec, plan: DownloadPlan) -> MemoryNeed:
    """The memory the model will need, from its config.json and the weights' sizes."""
    try:
        config = await asyncio.to_thread(_read_config, plan)
        weights = sum(f.size for f in plan.files if f.path.endswith(".safetensors"))
        return need_of(
            config,
            weights,
            context_length=spec.context_length,
            overhead=ctx.settings.engine.worker_overhead_bytes,
            sequences=ctx.settings.engine.max_concurrent_per_model,
            kv_budget=spec.kv_budget,
        )
    except MemoryEstimateError as exc:
        raise InvalidRequest(f"{plan.repo} cannot be served: {exc}", param="model") from exc
    except Exception as exc:  # the hub, the network
        raise ModelUnavailable(
            f"the hub did not answer for {plan.repo}: {type(exc).__name__}",
            code="download_failed",
            retry_after=5,
        ) from exc


def begin_download(
    ctx: AppContext, principal: Principal, plan: DownloadPlan, used: int
) -> DownloadJob:
    """Check quota and disk against what running downloads hold, and start (or join)
    the job, in one synchronous step.  ``used``: ``Downloader.measure()``, just before."""
    downloader = ctx.downloader
    assert downloader is not None
    running = downloader.active_for(plan.repo)
    if running is not None and running.plan.commit == plan.commit:
        return running  # shared: its bytes are held by the key that started it
    now = time.time()
    check_download(ctx, principal, plan.repo, plan.total_bytes, now=now, room=downloader.room(used))
    counted = ctx.counters.snapshot(principal.key_id, now).download_bytes_today
    job, _ = downloader.start(
        plan,
        principal.key_id,
        used=used,
        key_counted=counted,
        key_limit=principal.limits.download_bytes_per_day,
    )
    return job


async def start_download(
    ctx: AppContext, principal: Principal, repo: str, revision: str = "main"
) -> DownloadJob:
    """Every check, then the job (a new one, or the running one for the same model)."""
    check_gate(ctx, principal, repo)
    plan = await fetch_hub_plan(ctx, repo, revision)
    assert ctx.downloader is not None
    used = await ctx.downloader.measure()
    return begin_download(ctx, principal, plan, used)


def progress(job: DownloadJob) -> str:
    total = job.plan.total_bytes
    percent = 100 * job.bytes_done / total if total else 100
    return (
        f"downloading {job.plan.repo}: {format_bytes(job.bytes_done)} of "
        f"{format_bytes(total)} ({percent:.0f}%)"
    )


async def await_download(ctx: AppContext, spec: ModelSpec, job: DownloadJob) -> ModelSpec:
    """``spec`` with its files on disk once ``job`` is done (up to ``load_wait``)."""
    try:
        await asyncio.wait_for(asyncio.shield(job.done.wait()), ctx.settings.engine.load_wait)
    except TimeoutError:
        raise ModelLoading(
            f"{spec.id} is not on disk yet: {progress(job)}; retry shortly.",
            retry_after=job.eta_seconds or 5.0,
        ) from None
    return finished(ctx, spec, job)


def finished(ctx: AppContext, spec: ModelSpec, job: DownloadJob) -> ModelSpec:
    if job.state is not JobState.DONE:
        raise ModelUnavailable(f"the download of {job.plan.repo} failed: {job.error}")
    assert ctx.downloader is not None
    path = snapshot_path(ctx.downloader.cache_dir, job.plan)
    ready = replace(spec, path=path, revision=job.plan.commit)
    ctx.store.add(ready)
    ctx.registry.refresh(ready)
    return ready


__all__ = ["begin_download", "check_gate", "start_download", "progress"]
