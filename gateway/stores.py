"""Which stores hold the keys, the usage ledger and the counters: the one place that chooses.

    accounts.url empty           SQLite file ``<data_dir>/gateway.db`` (embedded default)
    accounts.url postgresql://   ``accounts.postgres_store.PostgresAccounts``, shared by
                                 several gateways
    counters.url empty           this process's memory (``MemoryCounters``)
    counters.url redis://        ``accounts.redis_counters.RedisCounters``, shared

The app and the CLI open whatever this returns through ``accounts.interfaces``.
"""

from __future__ import annotations

import time

from accounts.interfaces import Accounts, Counters, UsageLedger
from accounts.memory_counters import MemoryCounters, PeriodTotals
from accounts.sqlite_store import SQLiteAccounts
from gateway.settings import Settings


def open_accounts(settings: Settings) -> Accounts:
    """The key store and ledger ``accounts.url`` names (raises ``StoreUnavailable``
    when a shared one cannot be reached)."""
    config = settings.accounts
    if config.url:
        from accounts.postgres_store import PostgresAccounts  # psycopg only when used

        return PostgresAccounts(config.url, max_size=config.pool_size, timeout=config.timeout)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    return SQLiteAccounts(settings.data_path / "gateway.db")


def period_totals(ledger: UsageLedger) -> PeriodTotals:
    """What the counters seed a key's day from: its committed usage in the ledger."""

    def totals(key_id: str, since: float) -> tuple[int, int, list[float]]:
        return (
            ledger.tokens_since(key_id, since),
            ledger.download_bytes_since(key_id, since),
            ledger.loads_since(key_id, time.time() - 3600),
        )

    return totals


def open_counters(settings: Settings, ledger: UsageLedger) -> Counters:
    """The counters ``counters.url`` names."""
    config = settings.counters
    if config.url:
        from accounts.redis_counters import RedisCounters  # redis-py only when used

        return RedisCounters(
            config.url,
            period_totals(ledger),
            prefix=config.prefix,
            lease_ttl=config.lease_ttl,
            timeout=config.timeout,
        )
    return MemoryCounters(period_totals(ledger))
