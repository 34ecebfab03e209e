"""Who is asking: the authenticated caller, as plain data.

A principal comes from an opaque gateway key (looked up in the key store) or
from a verified JWT (claims mapped to the same fields).  Policies read it;
nothing in ``policies`` knows where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCOPES = ("infer", "load", "download", "admin")


@dataclass(frozen=True)
class Limits:
    """Per-key limits; ``None`` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    tokens_per_day: int | None = None
    loads_per_hour: int | None = None
    download_bytes_per_day: int | None = None


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    scopes: frozenset[str] = frozenset({"infer"})
    models: tuple[str, ...] = ("*",)  # glob patterns over catalogue model ids
    limits: Limits = field(default_factory=Limits)

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes
