"""The seams of the accounts package: what the gateway may ask of keys, usage and counters.

Routes, the CLI and admission see only these protocols; which store stands behind
them is the wiring's choice (``gateway.app``):

    KeyStore      the keys: created, authenticated (hash compared in constant time),
                  listed, updated, revoked                  SQLite (embedded default)
    UsageLedger   what each request, download and load used, committed before the
                  response's last byte; the period totals the quotas read back
                                                            SQLite (embedded default)
    Counters      the short windows (requests and tokens per minute, loads per hour),
                  concurrency slots and the admission pipeline's token reservations
                                                            in memory (embedded default)

A store for several gateways (PostgreSQL for keys and the ledger:
``accounts.postgres_store``; Redis for the counters) implements the same
protocols.  Nothing here imports ``gateway`` or ``engine``; the plain types come
from ``policies``.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import EllipsisType
from typing import Any, Protocol

from accounts.records import KeyRecord
from policies.principal import Limits
from policies.usage import UsageSnapshot


class KeyStore(Protocol):
    def create_key(
        self,
        name: str,
        *,
        scopes: Iterable[str] = ...,
        models: Iterable[str] = ...,
        limits: Limits | None = ...,
        now: float,
        expires_at: float | None = ...,
    ) -> tuple[KeyRecord, str]:
        """A new key: its record and the full secret (shown once, never stored)."""
        ...

    def create_first_key(
        self, name: str, scopes: Iterable[str], models: Iterable[str], limits: Limits, now: float
    ) -> tuple[KeyRecord, str] | None:
        """A key, only if the store holds none at all, revoked ones included (check and
        insert atomic, so two gateways starting at once cannot both create one); else
        ``None``."""
        ...

    def authenticate(self, presented: str, now: float) -> KeyRecord | None:
        """The live key ``presented`` names (not revoked, not expired), else ``None``."""
        ...

    def get(self, key_id: str) -> KeyRecord | None: ...

    def list_keys(self) -> list[KeyRecord]: ...

    def count_keys(self) -> int: ...

    def update(
        self,
        key_id: str,
        *,
        name: str | None = None,
        scopes: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
        limits: dict[str, int | None] | None = None,
        expires_at: float | None | EllipsisType = ...,
    ) -> KeyRecord: ...

    def revoke(self, key_id: str, now: float) -> KeyRecord: ...

    def unavailable(self) -> str | None:
        """Why the store cannot be used now (for ``/ready``), else ``None``."""
        ...

    def close(self) -> None: ...


class UsageLedger(Protocol):
    async def arecord_usage(
        self,
        key_id: str,
        model: str,
        route: str,
        prompt_tokens: int,
        completion_tokens: int,
        status: int,
        duration_ms: int,
        now: float,
    ) -> None:
        """Commit one request's usage (on return it is durable)."""
        ...

    async def arecord_download(self, key_id: str, repo: str, bytes_: int, now: float) -> None: ...

    async def arecord_load(self, key_id: str, model: str, now: float) -> None: ...

    def tokens_since(self, key_id: str, since: float) -> int: ...

    def download_bytes_since(self, key_id: str, since: float) -> int: ...

    def loads_since(self, key_id: str, since: float) -> list[float]: ...

    def usage_summary(
        self, *, key_id: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]: ...

    def usage_by_day(self, *, since: float, key_id: str | None = None) -> list[dict[str, Any]]:
        """``usage_summary``'s rows per UTC day too (``day``: "YYYY-MM-DD"), oldest first."""
        ...


class TokenHold(Protocol):
    """Tokens held for one request: reserved at admission, settled once at its end
    (the first call counts; never raises)."""

    key_id: str
    ref: str
    """Names the hold to another gateway (``Counters.settle_ref``); "" where no other
    gateway can reach it (in-process counters)."""

    def settle(self, real: int) -> None: ...


class Counters(Protocol):
    def snapshot(self, key_id: str, now: float) -> UsageSnapshot:
        """The key's usage as the policies read it (reservations included)."""
        ...

    def admit(
        self, key_id: str, now: float, *, load: bool, tokens: int = 0, limits: Limits | None = None
    ) -> TokenHold:
        """Count an admitted request, take its concurrency slot and reserve ``tokens``.

        In one process this is one synchronous step with the ``snapshot`` it was
        decided on, so nothing can come in between.  A store shared by several
        gateways checks ``limits`` again in the same atomic step as the count (the
        per-minute rates, concurrency, tokens per day, and loads per hour when
        ``load``), and raises ``accounts.errors.LimitRaced``, counting nothing, when
        another gateway's admission made one of them no longer hold."""
        ...

    def finish(self, hold: TokenHold) -> None:
        """Give back the concurrency slot ``admit`` took with ``hold`` (the first call
        counts; never raises: a shared store that cannot be reached lets the slot's
        lease run out instead)."""
        ...

    def settle_ref(self, key_id: str, ref: str, real: int) -> None:
        """Settle the open hold ``ref`` that another gateway took for a request it
        forwarded here (a no-op once settled: the first settlement counts; never
        raises)."""
        ...

    def charge_download(self, key_id: str, nbytes: int, now: float) -> None: ...

    def unavailable(self) -> str | None:
        """Why the counters cannot be used now (for ``/ready``), else ``None``."""
        ...

    def close(self) -> None: ...


class Accounts(KeyStore, UsageLedger, Protocol):
    """One store that holds both the keys and the ledger (SQLite, PostgreSQL): what the
    CLI opens, and closes with ``with``."""

    def __enter__(self) -> Accounts: ...

    def __exit__(self, *exc: object) -> None: ...
