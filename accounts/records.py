"""A key as stored: its record, the row it is read from, and the checks on what is written.

``KeyRecord`` is what the key store hands out (never the secret); the checks
refuse, before anything is written, scopes, allowlists, limits and expiry
times that the database must not hold (a limit past 2^53, an infinite expiry).
Every store (SQLite, PostgreSQL) reads its rows with ``record_of``, checks what
it writes with ``new_key_columns`` and ``key_changes``, and decides a presented
secret with ``authenticated``: the rules exist once, whatever the database.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

from accounts.keys import MAX_LIMIT, hash_secret, verify
from accounts.limits import LIMIT_COLUMNS
from policies.principal import SCOPES, Limits, Principal


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    scopes: frozenset[str]
    models: tuple[str, ...]
    limits: Limits
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def principal(self) -> Principal:
        return Principal(self.id, self.name, self.scopes, self.models, self.limits)

    def active(self, now: float) -> bool:
        """Not revoked and not expired."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


# A keys-table row by column name: ``sqlite3.Row`` or psycopg's ``dict_row``.
Row = sqlite3.Row | Mapping[str, Any]

_DUMMY_HASH = hash_secret("")  # compared against when the id is unknown, to take the same time


def record_of(row: Row) -> KeyRecord:
    limits = Limits(**{field: row[column] for field, column in LIMIT_COLUMNS.items()})
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        scopes=frozenset(s for s in row["scopes"].split(",") if s),
        models=tuple(json.loads(row["models"])),
        limits=limits,
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def check_scopes(scopes: Iterable[str]) -> str:
    if isinstance(scopes, str):
        raise TypeError("scopes: give a collection of scope names, not one string")
    chosen = set(scopes)
    if not chosen or chosen - set(SCOPES):
        raise ValueError(f"scopes: {sorted(chosen)} must be among {', '.join(SCOPES)}")
    return ",".join(s for s in SCOPES if s in chosen)


def check_models(models: Iterable[str]) -> str:
    if isinstance(models, str):
        raise TypeError("models: give a collection of glob patterns, not one string")
    globs = list(models)
    if not globs or not all(isinstance(g, str) and g.strip() == g and g for g in globs):
        raise ValueError(f"models: {globs!r} must be non-empty glob patterns")
    return json.dumps(globs)


def check_limits(limits: Limits) -> list[int | None]:
    values = [getattr(limits, field) for field in LIMIT_COLUMNS]
    for field, value in zip(LIMIT_COLUMNS, values, strict=True):
        if value is not None and (type(value) is not int or not 0 <= value <= MAX_LIMIT):
            raise ValueError(f"{field}: {value!r} must be an integer in [0, {MAX_LIMIT}] or None")
    return values


def check_expiry(expires_at: float | None) -> float | None:
    if expires_at is not None and not math.isfinite(expires_at):
        raise ValueError(f"expires_at: {expires_at!r} must be a finite time or None")
    return expires_at


def check_name(name: str) -> str:
    if not name.strip():
        raise ValueError("name: must not be empty")
    return name


def new_key_columns(
    name: str,
    scopes: Iterable[str],
    models: Iterable[str],
    limits: Limits,
    expires_at: float | None,
) -> dict[str, Any]:
    """The checked columns of a new key, by column name (all but id, hash and creation time)."""
    columns: dict[str, Any] = {
        "name": check_name(name),
        "scopes": check_scopes(scopes),
        "models": check_models(models),
    }
    columns.update(zip(LIMIT_COLUMNS.values(), check_limits(limits), strict=True))
    columns["expires_at"] = check_expiry(expires_at)
    return columns


def key_changes(
    *,
    name: str | None,
    scopes: Iterable[str] | None,
    models: Iterable[str] | None,
    limits: dict[str, int | None] | None,
    expires_at: float | None | EllipsisType,
) -> dict[str, Any]:
    """The checked columns an update sets; ``limits`` maps ``Limits`` field names."""
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = check_name(name)
    if scopes is not None:
        changes["scopes"] = check_scopes(scopes)
    if models is not None:
        changes["models"] = check_models(models)
    if expires_at is not ...:
        changes["expires_at"] = check_expiry(expires_at)
    if limits:
        unknown = set(limits) - set(LIMIT_COLUMNS)
        if unknown:
            raise ValueError(f"limits: unknown {sorted(unknown)}; known: {list(LIMIT_COLUMNS)}")
        check_limits(Limits(**limits))
        changes.update({LIMIT_COLUMNS[field]: value for field, value in limits.items()})
    return changes


def authenticated(row: Row | None, secret: str, now: float) -> KeyRecord | None:
    """The record of ``row`` if ``secret`` is its secret and the key is active, else ``None``.

    The hash is compared in constant time, and against a dummy hash when there is no
    row (an unknown id), so that an unknown id takes as long as a wrong secret.
    """
    matches = verify(secret, row["secret_hash"] if row is not None else _DUMMY_HASH)
    if row is None or not matches:
        return None
    record = record_of(row)
    return record if record.active(now) else None
