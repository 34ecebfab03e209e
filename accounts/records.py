"""A key as stored: its record, the row it is read from, and the checks on what is written.

``KeyRecord`` is what the key store hands out (never the secret); the checks
refuse, before anything is written, scopes, allowlists, limits and expiry
times that the database must not hold (a limit past 2^53, an infinite expiry).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from accounts.keys import MAX_LIMIT
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


def record_of(row: sqlite3.Row) -> KeyRecord:
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
