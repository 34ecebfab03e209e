"""Model downloads through ``huggingface_hub``: sizes first, then bytes, under a disk budget.

``engine.hub_plan.fetch_plan`` reads what a repo holds (metadata only).  The
``Downloader`` runs one job per (repo, commit): concurrent requests for the
same model share it.  A job downloads with ``hf_hub_download`` into the
Hugging Face cache (so ``HF_ENDPOINT``, ``HF_TOKEN``, the cache layout and
resumption behave as users know), weights first and ``config.json`` last: a
snapshot without ``config.json`` is never taken for a model, so an
interrupted download never looks complete.  A job holds its declared bytes in
the disk ledger and its key's quota ledger (``engine.ledger``) while it runs;
as bytes arrive it checks its cancel flag, both ledgers and the real free
space, and aborts cleanly (removing what it wrote) when one says stop.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from engine.hub_plan import DownloadError, DownloadPlan, RemoteFile, fetch_plan, needed
from engine.ledger import Ledgers

log = logging.getLogger("engine.downloads")
DISK = "disk"


def _key_ledger(key_id: str) -> str:
    return f"key:{key_id}"


class DownloadAborted(Exception):
    """Raised inside the download thread to stop it (cancel, disk budget, no space)."""


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
    ledgers: tuple[str, ...] = ()  # the byte ledgers this job holds bytes in
    written: list[Path] = field(default_factory=list)  # blobs this job completed
    removed: bool = False  # failed or cancelled: what it wrote was removed
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def declared_bytes(self) -> int:
        return self.plan.total_bytes

    @property
    def written_bytes(self) -> int:
        return self.bytes_done

    @property
    def kept_bytes(self) -> int:
        return 0 if self.removed else self.bytes_done

    @property
    def running(self) -> bool:
        return self.state is JobState.DOWNLOADING

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
        self.ledgers = Ledgers()
        self._finished = 0  # jobs finished so far: a walk older than one is stale

    def clean_partial(self) -> int:
        """Remove what an interrupted run left (``*.incomplete`` blobs of a process that
        died mid-download); returns how many.  Run at start, before any job."""
        removed = 0
        for partial in self.cache_dir.glob("models--*/blobs/*.incomplete"):
            partial.unlink(missing_ok=True)
            removed += 1
        return removed

    async def measure(self) -> int:
        """The store's size on disk now, as the disk ledger counts it: the running
        ledger's base, or a fresh walk (off the event loop) when no job runs."""
        while True:
            ledger = self.ledgers.get(DISK)
            if ledger is not None:
                return ledger.base
            finished = self._finished
            used = await asyncio.to_thread(self._disk.used)
            if finished == self._finished:  # no job ended during the walk
                return used
            # else a job's last files may be missing from the walk: measure again

    def room(self, used: int) -> int:
        """Bytes a new download may still declare: the disk budget and the real free
        space (less ``min_free``), after what running downloads hold."""
        disk = self._disk
        ledger = self.ledgers.get(DISK)
        base = ledger.base if ledger is not None else used
        held = ledger.held() if ledger is not None else 0
        pending = sum(
            max(0, j.declared_bytes - j.written_bytes) for j in self.jobs.values() if j.running
        )
        return max(0, min(disk.budget - base - held, disk.free() - disk.min_free - pending))

    def key_used(self, key_id: str, counted: int) -> int:
        """A key's download bytes of the day: ``counted`` (what its finished and
        running jobs delivered so far) or, while it has a job running, its ledger's
        base plus what its jobs hold (declared sizes included)."""
        ledger = self.ledgers.get(_key_ledger(key_id))
        return counted if ledger is None else ledger.base + ledger.held()

    def free_bytes(self) -> int:
        """What a new download may still use (walks the store: not on the event loop)."""
        return self.room(self._disk.used())

    def active_for(self, repo: str) -> DownloadJob | None:
        for job in self.jobs.values():
            if job.plan.repo == repo and job.state is JobState.DOWNLOADING:
                return job
        return None

    def start(
        self,
        plan: DownloadPlan,
        key_id: str,
        *,
        used: int | None = None,
        key_counted: int = 0,
        key_limit: int | None = None,
    ) -> tuple[DownloadJob, bool]:
        """The job for ``plan``: a running one (shared) or a new one; True when new.

        A new job holds its declared size in the disk ledger (on ``used``, the
        store's measured size) and in its key's ledger (on ``key_counted``, the
        key's bytes of the day, against ``key_limit``) until it ends; the caller
        has checked, in the same synchronous step, that both have room.
        """
        for job in self.jobs.values():
            same = job.plan.repo == plan.repo and job.plan.commit == plan.commit
            if same and job.state is JobState.DOWNLOADING:
                return job, False
        job = DownloadJob(f"dl-{next(self._ids)}", plan, key_id)
        disk_base = self._disk.used() if used is None else used
        names = (DISK, _key_ledger(key_id))
        job.ledgers = names
        self.ledgers.open(DISK, disk_base, self._disk.budget, disk=True).jobs.append(job)
        self.ledgers.open(names[1], key_counted, key_limit).jobs.append(job)
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
        over = self.ledgers.over(list(job.ledgers), job)  # no directory walk per chunk
        if over == DISK:
            raise DownloadAborted("the disk budget is used up")
        if over is not None:
            raise DownloadAborted("the key's daily download quota is used up")

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
                job.written.append(Path(str(local)))
                if job.bytes_done - before < actual:  # a file the client did not report
                    job.bytes_done = before + actual
                    self._check(job)
                path = Path(str(local)).parent
        except DownloadAborted as exc:
            state = JobState.CANCELLED if job.cancel_requested else JobState.FAILED
            error = str(exc)
        except Exception as exc:  # the hub, the network, the disk
            state, error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
        if state is not JobState.DONE:
            self._remove_partial(plan, job.written)
            log.warning("download %s of %s ended: %s", job.id, plan.repo, error)
        loop.call_soon_threadsafe(self._finish, job, state, error, path)

    def _remove_partial(self, plan: DownloadPlan, written: list[Path]) -> None:
        """Leave nothing that looks like a model, and nothing this job wrote: its
        files (the snapshot's links and the blobs behind them) go, config.json
        (downloaded last) with them.

        hf_hub_download resumes a dropped transfer itself within one call (Range
        requests); a call that fails keeps no partial blob."""
        folder = self.cache_dir / ("models--" + plan.repo.replace("/", "--"))
        snapshot = folder / "snapshots" / plan.commit
        for link in [*written, snapshot / "config.json"]:
            with contextlib.suppress(OSError):
                blob = link.resolve() if link.is_symlink() else None
                link.unlink(missing_ok=True)
                if blob is not None and blob.is_relative_to(folder):
                    blob.unlink(missing_ok=True)

    def _finish(
        self, job: DownloadJob, state: JobState, error: str | None, path: Path | None
    ) -> None:
        job.state, job.error, job.path = state, error, path
        job.removed = state is not JobState.DONE  # its files are gone: no disk held
        job.finished = time.monotonic()
        self._finished += 1
        job.done.set()
        if self._on_finished is not None:
            self._on_finished(job)


def free_space(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


__all__ = [
    "DiskBudget",
    "DownloadError",
    "DownloadJob",
    "DownloadPlan",
    "Downloader",
    "JobState",
    "RemoteFile",
    "directory_bytes",
    "fetch_plan",
    "free_space",
    "needed",
]
