"""The first admin key: created on a store that holds no key at all, whichever store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from policies.principal import SCOPES, Limits

if TYPE_CHECKING:
    from accounts.interfaces import KeyStore


def ensure_admin_key(store: KeyStore, now: float) -> str | None:
    """On a store with no keys at all, create key "admin" (every scope, every model).

    Returns its full key, to be shown once, or ``None`` when the store already has keys
    (revoked ones count).  The store checks and inserts atomically
    (``KeyStore.create_first_key``), so two processes cannot both create one.
    """
    created = store.create_first_key(
        "admin", scopes=SCOPES, models=("*",), limits=Limits(), now=now
    )
    return None if created is None else created[1]
