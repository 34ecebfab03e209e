"""Getting a hub model onto disk for a request or an admin, only when policy allows.

The order is SPEC.md section 2, step 7: downloads enabled and the repo in the
operator's allowlist, the key's ``download`` scope (checked before the hub is
even asked for metadata), then the size read from the hub's metadata against
``max_model_size``, the key's daily download quota and the disk budget.  Only
then does a job start (or an identical running one is joined).  A request
waits up to ``load_wait`` for the download, then gets 503 ``model_loading``
with the job's progress and an estimated ``Retry-After`` while it continues.
"""

from __future__ import annotations

import asyncio
import fnmatch
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
from engine.memory import format_bytes
from engine.store import ModelSpec
from gateway.admission import from_denial
from gateway.catalogue import cache_dir
from gateway.context import AppContext
from gateway.errors import (
    GatewayError,
    InsufficientStorage,
    ModelLoading,
    ModelUnavailable,
    PermissionDenied,
)
from gateway.settings import DownloadSettings, Settings, parse_size
from policies.allowlist import model_allowed
from policies.decision import Deny
from policies.evaluate import evaluate_download
from policies.principal import Principal


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


def check_download(
    ctx: AppContext, principal: Principal, repo: str, size: int, *, now: float
) -> None:
    """Raise the first download denial (``size`` 0: before the hub is asked anything).

    A download is always followed by a load, so the key needs the model in its
    allowlist and the ``infer`` and ``load`` scopes as well as ``download``.
    """
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
    usage = ctx.counters.snapshot(principal.key_id, now)
    assert ctx.downloader is not None
    decision = evaluate_download(
        principal,
        repo_allowed(config, repo),
        config.enabled,
        size,
        ctx.downloader.free_bytes() if size else 1,
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


async def start_download(
    ctx: AppContext, principal: Principal, repo: str, revision: str = "main"
) -> DownloadJob:
    """Every check, then the job (a new one, or the running one for the same model)."""
    check_download(ctx, principal, repo, 0, now=time.time())
    try:
        plan = await asyncio.to_thread(fetch_plan, repo, revision)
    except DownloadError as exc:
        raise ModelUnavailable(str(exc), code="download_failed") from exc
    assert ctx.downloader is not None
    running = ctx.downloader.active_for(repo)
    if running is not None and running.plan.commit == plan.commit:
        return running  # shared: charged to the key that started it
    check_download(ctx, principal, repo, plan.total_bytes, now=time.time())
    job, _ = ctx.downloader.start(plan, principal.key_id)
    return job


def progress(job: DownloadJob) -> str:
    total = job.plan.total_bytes
    percent = 100 * job.bytes_done / total if total else 100
    return (
        f"downloading {job.plan.repo}: {format_bytes(job.bytes_done)} of "
        f"{format_bytes(total)} ({percent:.0f}%)"
    )


async def ensure_on_disk(ctx: AppContext, principal: Principal, spec: ModelSpec) -> ModelSpec:
    """``spec`` with its files on disk, downloading them first if policy allows."""
    if spec.on_disk or spec.repo is None:
        return spec
    if ctx.downloader is None:
        raise ModelUnavailable(f"{spec.id} is not on disk and downloads are disabled.")
    job = await start_download(ctx, principal, spec.repo, spec.revision or "main")
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


__all__ = ["GatewayError", "ensure_on_disk", "start_download", "progress"]
