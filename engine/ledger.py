"""Byte ledgers: what running downloads hold against a limit (a key's quota, the disk).

A ledger has a ``base`` (bytes already counted when its first job started:
the key's downloads of the day, or the store's size on disk) and the jobs
that hold bytes against it.  Each job holds the larger of its declared size
(the hub's metadata, reserved when it starts) and what it has really fetched,
so concurrent jobs cannot together pass the limit, and a hub that
under-reports a file is stopped the moment the real bytes would pass it.
A ledger lives while any of its jobs runs; finished jobs keep their real
bytes in it until then.  All methods take the downloader's lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol


class Holding(Protocol):
    """What a ledger needs of a job."""

    @property
    def declared_bytes(self) -> int: ...

    @property
    def written_bytes(self) -> int: ...

    @property
    def kept_bytes(self) -> int: ...

    @property
    def running(self) -> bool: ...


@dataclass(eq=False)
class Ledger:
    base: int
    limit: int | None
    disk: bool = False  # a disk ledger: a failed job's removed files hold nothing
    jobs: list[Holding] = field(default_factory=list)

    def held(self, exclude: Holding | None = None) -> int:
        total = 0
        for job in self.jobs:
            if job is exclude:
                continue
            if job.running:
                total += max(job.declared_bytes, job.written_bytes)
            else:
                total += job.kept_bytes if self.disk else job.written_bytes
        return total

    def room(self) -> int | None:
        """Bytes a new job may still declare (``None``: no limit)."""
        if self.limit is None:
            return None
        return max(0, self.limit - self.base - self.held())

    def over(self, job: Holding) -> bool:
        """True when ``job``'s real bytes, beside what the others hold, pass the limit."""
        if self.limit is None:
            return False
        return self.base + job.written_bytes + self.held(exclude=job) > self.limit

    @property
    def active(self) -> bool:
        return any(job.running for job in self.jobs)


class Ledgers:
    """The ledgers of one downloader, keyed by name (a key id, or ``"disk"``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._ledgers: dict[str, Ledger] = {}

    def get(self, name: str) -> Ledger | None:
        with self.lock:
            ledger = self._ledgers.get(name)
            if ledger is not None and not ledger.active:
                del self._ledgers[name]
                return None
            return ledger

    def open(self, name: str, base: int, limit: int | None, *, disk: bool = False) -> Ledger:
        """The running ledger of ``name``, or a new one on ``base``."""
        with self.lock:
            ledger = self._ledgers.get(name)
            if ledger is None or not ledger.active:
                ledger = self._ledgers[name] = Ledger(base, limit, disk)
            ledger.limit = limit
            return ledger

    def over(self, names: list[str], job: Holding) -> str | None:
        """The first of ``names`` whose ledger ``job`` has pushed past its limit."""
        with self.lock:
            for name in names:
                ledger = self._ledgers.get(name)
                if ledger is not None and ledger.over(job):
                    return name
        return None
