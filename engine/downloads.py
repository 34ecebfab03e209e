"""Model downloads through ``huggingface_hub``: sizes first, then bytes, under a disk budget.

``fetch_plan`` reads a repo's file list and sizes from the hub's metadata (no
file byte is fetched) and keeps only what an MLX model needs.  The
``Downloader`` runs one job per (repo, commit): concurrent requests for the
same model share it.  A job downloads with ``hf_hub_download`` into the
Hugging Face cache (so ``HF_ENDPOINT``, ``HF_TOKEN``, the cache layout and
resumption behave as users know), weights first and ``config.json`` last: a
snapshot without ``config.json`` is never taken for a model, so an
interrupted download never looks complete.  As bytes arrive, the job checks
its cancel flag, the disk budget and the real free space, and aborts cleanly
when one says stop.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger("engine.downloads")

NEEDED = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "*.tiktoken",
)


class DownloadError(Exception):
    """The hub refused or failed (the message says which); nothing usable was written."""


class DownloadAborted(Exception):
    """Raised inside the download thread to stop it (cancel, disk budget, no space)."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


@dataclass(frozen=True)
class DownloadPlan:
    repo: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def needed(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return "/" not in path and any(fnmatch.fnmatchcase(name, p) for p in NEEDED)


def order_files(files: list[RemoteFile]) -> tuple[RemoteFile, ...]:
    """Weights first, config.json last: its presence marks a complete model."""
    return tuple(
        sorted(
            files,
            key=lambda f: (f.path == "config.json", not f.path.endswith(".safetensors"), f.path),
        )
    )


def fetch_plan(
    repo: str, revision: str = "main", *, endpoint: str | None = None, token: str | None = None
) -> DownloadPlan:
    """The files an MLX model needs from ``repo`` and their sizes (metadata only)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo, revision=revision, files_metadata=True
        )
    except GatedRepoError as exc:
        raise DownloadError(f"{repo} is gated; the hub token has no access") from exc
    except RepositoryNotFoundError as exc:
        raise DownloadError(f"{repo} does not exist on the hub (or is private)") from exc
    except RevisionNotFoundError as exc:
        raise DownloadError(f"{repo} has no revision {revision}") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise DownloadError(f"the hub did not answer for {repo}: {exc}") from exc
    files = [
        RemoteFile(s.rfilename, int(s.size or 0))
        for s in info.siblings or []
        if needed(s.rfilename)
    ]
    names = {f.path for f in files}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise DownloadError(f"{repo} is not an MLX model (no config.json and safetensors)")
    return DownloadPlan(repo, revision, str(info.sha), order_files(files))


class JobState(StrEnum):
    DOWNLOADING = "downloading"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class DownloadJob:
    id: str
    plan: DownloadPlan
    key_id: str
    state: JobState = JobState.DOWNLOADING
    bytes_done: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    error: str | None = None
    path: Path | None = None
    cancel_requested: bool = False
    used_before: int = 0  # the store's size when the job started
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def bytes_per_second(self) -> float:
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.bytes_done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        speed = self.bytes_per_second
        if self.state is not JobState.DOWNLOADING or speed <= 0:
            return None
        return max(0.0, (self.plan.total_bytes - self.bytes_done) / speed)


@dataclass(frozen=True)
class DiskBudget:
    """``budget`` bytes for the model store, and always ``min_free`` bytes left on disk."""

    budget: int
    min_free: int
    used: Callable[[], int]
    free: Callable[[], int]


def directory_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class Downloader:
    """Owns every download job; one job per (repo, commit)."""

    _ids = itertools.count(1)

    def __init__(
        self,
        cache_dir: Path,
        disk: DiskBudget,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        on_bytes: Callable[[str, int], None] | None = None,
        on_finished: Callable[[DownloadJob], None] | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self._disk = disk
        self.disk = disk
        self._endpoint = endpoint
        self._token = token
        self._on_bytes = on_bytes
        self._on_finished = on_finished
        self.jobs: dict[str, DownloadJob] = {}

    def clean_partial(self) -> int:
        """Remove what an interrupted run left (``*.incomplete`` blobs of a process that
        died mid-download); returns how many.  Run at start, before any job."""
        removed = 0
        for partial in self.cache_dir.glob("models--*/blobs/*.incomplete"):
            partial.unlink(missing_ok=True)
            removed += 1
        return removed

    def free_bytes(self) -> int:
        """What a new download may still use: the lesser of budget and real free space."""
        disk = self._disk
        return max(0, min(disk.budget - disk.used(), disk.free() - disk.min_free))

    def active_for(self, repo: str) -> DownloadJob | None:
        for job in self.jobs.values():
            if job.plan.repo == repo and job.state is JobState.DOWNLOADING:
                return job
        return None

    def start(self, plan: DownloadPlan, key_id: str) -> tuple[DownloadJob, bool]:
        """The job for ``plan``: a running one (shared) or a new one; True when new."""
        for job in self.jobs.values():
            same = job.plan.repo == plan.repo and job.plan.commit == plan.commit
            if same and job.state is JobState.DOWNLOADING:
                return job, False
        job = DownloadJob(f"dl-{next(self._ids)}", plan, key_id, used_before=self._disk.used())
        self.jobs[job.id] = job
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._run, args=(job, loop), name=f"download-{job.id}", daemon=True
        ).start()
        return job, True

    def cancel(self, job_id: str) -> DownloadJob | None:
        job = self.jobs.get(job_id)
        if job is not None and job.state is JobState.DOWNLOADING:
            job.cancel_requested = True
        return job

    def _check(self, job: DownloadJob) -> None:
        if job.cancel_requested:
            raise DownloadAborted("cancelled")
        disk = self._disk
        if disk.free() < disk.min_free:
            raise DownloadAborted("the disk is nearly full")
        if job.used_before + job.bytes_done > disk.budget:  # no directory walk per chunk
            raise DownloadAborted("the disk budget is used up")

    def _progress_class(self, job: DownloadJob, loop: asyncio.AbstractEventLoop) -> type:
        from tqdm.auto import tqdm

        downloader = self

        class Progress(tqdm):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                amount = int(n or 0)
                job.bytes_done += amount
                if downloader._on_bytes is not None and amount:
                    on_bytes = downloader._on_bytes
                    loop.call_soon_threadsafe(on_bytes, job.key_id, amount)
                downloader._check(job)
                return super().update(n)

        return Progress

    def _run(self, job: DownloadJob, loop: asyncio.AbstractEventLoop) -> None:
        from huggingface_hub import hf_hub_download

        plan = job.plan
        progress = self._progress_class(job, loop)
        state, error, path = JobState.DONE, None, None
        try:
            for remote in plan.files:
                self._check(job)
                before = job.bytes_done
                local = hf_hub_download(
                    plan.repo,
                    remote.path,
                    revision=plan.commit,
                    cache_dir=self.cache_dir,
                    endpoint=self._endpoint,
                    token=self._token,
                    tqdm_class=progress,
                )
                actual = Path(str(local)).stat().st_size
                if job.bytes_done - before < actual:  # a file the client did not report
                    job.bytes_done = before + actual
                path = Path(str(local)).parent
        except DownloadAborted as exc:
            state = JobState.CANCELLED if job.cancel_requested else JobState.FAILED
            error = str(exc)
        except Exception as exc:  # the hub, the network, the disk
            state, error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
        if state is not JobState.DONE:
            self._remove_partial(plan)
            log.warning("download %s of %s ended: %s", job.id, plan.repo, error)
        loop.call_soon_threadsafe(self._finish, job, state, error, path)

    def _remove_partial(self, plan: DownloadPlan) -> None:
        """Leave nothing that looks like a model: config.json (downloaded last) goes.

        hf_hub_download resumes a dropped transfer itself within one call (Range
        requests); a call that fails keeps no partial blob, so the next attempt
        starts that file again and reuses every file already complete."""
        folder = self.cache_dir / ("models--" + plan.repo.replace("/", "--"))
        snapshot = folder / "snapshots" / plan.commit
        config = snapshot / "config.json"
        if config.is_symlink() or config.exists():
            config.unlink()

    def _finish(
        self, job: DownloadJob, state: JobState, error: str | None, path: Path | None
    ) -> None:
        job.state, job.error, job.path = state, error, path
        job.finished = time.monotonic()
        job.done.set()
        if self._on_finished is not None:
            self._on_finished(job)


def free_space(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free
