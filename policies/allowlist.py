"""Which catalogue models a key may use: glob patterns over model ids.

A principal's ``models`` holds patterns such as ``"*"``, ``"mlx-community/*"``
or ``"smollm2-*"``.  Matching is case-sensitive (``fnmatch.fnmatchcase``), so
the result is the same on every platform, and is done against the canonical
catalogue id: the gateway resolves an alias to its model before asking.  In a
glob ``*`` also matches ``/``, so ``"mlx-community/*"`` covers every model of
that organisation and ``"*"`` covers everything.  An empty ``models`` tuple
allows nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from policies.principal import Principal


def matching_pattern(principal: Principal, model_id: str) -> str | None:
    """The first of the key's patterns that matches ``model_id``, or ``None``."""
    for pattern in principal.models:
        if fnmatchcase(model_id, pattern):
            return pattern
    return None


def model_allowed(principal: Principal, model_id: str) -> bool:
    """True when one of the key's patterns matches ``model_id``.

    The ``admin`` scope does not widen the allowlist: an admin key limited to
    some models is limited to them for inference too.
    """
    return matching_pattern(principal, model_id) is not None


def visible_models(principal: Principal, model_ids: Iterable[str]) -> list[str]:
    """The ids of ``model_ids`` the key may use, in their given order.

    For ``GET /v1/models``: a key sees only what it may request, so a listing
    never reveals models the key cannot use.
    """
    return [model_id for model_id in model_ids if model_allowed(principal, model_id)]
