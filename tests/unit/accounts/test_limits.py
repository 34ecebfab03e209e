"""The limit names are defined once (``accounts.limits``): every mapping agrees with
``policies.principal.Limits`` and the admin API's schema."""

from __future__ import annotations

import dataclasses

import msgspec

from accounts.limits import LIMIT_CLAIMS, LIMIT_COLUMNS, LIMIT_FLAGS, LIMITS
from gateway.routes.keys import LimitsIn
from policies.principal import Limits


def test_every_limit_of_the_policies_is_named_once():
    fields = [f.name for f in dataclasses.fields(Limits)]
    assert [limit.field for limit in LIMITS] == fields
    for mapping in (LIMIT_COLUMNS, {v: k for k, v in LIMIT_CLAIMS.items()}):
        assert sorted(mapping) == sorted(fields)
    assert len(set(LIMIT_COLUMNS.values())) == len(fields)
    assert set(LIMIT_FLAGS.values()) == set(fields) - {"download_bytes_per_day"}


def test_the_admin_api_schema_names_the_same_limits():
    assert [f.name for f in msgspec.structs.fields(LimitsIn)] == [limit.field for limit in LIMITS]
