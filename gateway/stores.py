"""Which store holds the keys and the usage ledger: the one place that chooses.

Today the SQLite file ``<data_dir>/gateway.db`` (the embedded default); a store
that several gateways share will be chosen here too, and the app and the CLI
open whatever this returns through ``accounts.interfaces.Accounts``.
"""

from __future__ import annotations

from accounts.interfaces import Accounts
from accounts.sqlite_store import SQLiteAccounts
from gateway.settings import Settings


def open_accounts(settings: Settings) -> Accounts:
    settings.data_path.mkdir(parents=True, exist_ok=True)
    return SQLiteAccounts(settings.data_path / "gateway.db")
