"""The per-key limits, named once: the ``Limits`` field (and admin API name), the
keys table's column, the JWT claim and the CLI flag of each.

Every place that maps a limit name (the stores' columns, ``gateway.auth``'s claims,
``gateway keys``' flags and listing, the admin API's schema) reads this table; a
test checks it against ``policies.principal.Limits`` and the admin schema.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LimitName:
    field: str  # ``policies.principal.Limits`` field; the admin API's name
    column: str  # the keys table's column
    claim: str  # the JWT claim, inside ``limits``
    flag: str | None  # ``gateway keys create/update`` flag (None: a flag of its own)
    short: str  # how ``gateway keys list`` shows it


LIMITS = (
    LimitName("requests_per_minute", "rpm", "rpm", "--rpm", "rpm"),
    LimitName("tokens_per_minute", "tpm", "tpm", "--tpm", "tpm"),
    LimitName(
        "max_concurrent", "max_concurrent", "max_concurrent", "--max-concurrent", "max_concurrent"
    ),
    LimitName(
        "tokens_per_day", "tokens_per_day", "tokens_per_day", "--tokens-per-day", "tokens_per_day"
    ),
    LimitName(
        "loads_per_hour", "loads_per_hour", "loads_per_hour", "--loads-per-hour", "loads_per_hour"
    ),
    # ``--download-quota 20GB/day``: parsed as a quota string, not a number.
    LimitName(
        "download_bytes_per_day",
        "download_bytes_per_day",
        "download_bytes_per_day",
        None,
        "download",
    ),
)

LIMIT_COLUMNS = {limit.field: limit.column for limit in LIMITS}
LIMIT_CLAIMS = {limit.claim: limit.field for limit in LIMITS}
LIMIT_FLAGS = {limit.flag: limit.field for limit in LIMITS if limit.flag}
LIMIT_SHORT = {limit.field: limit.short for limit in LIMITS}
