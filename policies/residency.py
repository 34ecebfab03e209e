"""How long a request may keep its model loaded: Ollama's per-request ``keep_alive``.

A model's residency is shared: extending it pins memory that other models
might need, and shortening it (``0`` unloads the model once idle) evicts it
for everyone who uses it.  So a ``keep_alive`` other than the model's own
default needs the ``load`` scope, the scope that may cause loads and evictions
(a key without it may send the default, which then changes nothing);
the operator's ceiling (``engine.keep_alive_max``) lowers a longer one, and
"forever" (a negative value) is the ceiling itself unless the ceiling is none.
"""

from __future__ import annotations

from policies.decision import ALLOW, Decision
from policies.denials import missing_scope
from policies.principal import Principal


def clamp_keep_alive(requested: float, ceiling: float) -> float:
    """``requested`` seconds (negative: forever) within ``ceiling`` (negative: none)."""
    if ceiling < 0:
        return -1.0 if requested < 0 else requested
    if requested < 0:
        return ceiling
    return min(requested, ceiling)


def check_keep_alive(
    principal: Principal, requested: float | None, default: float, ceiling: float
) -> tuple[Decision, float | None]:
    """The decision on a request's ``keep_alive`` and the value to apply (``None``:
    leave the model's residency as it is)."""
    if requested is None:
        return ALLOW, None
    value = clamp_keep_alive(requested, ceiling)
    if principal.has("load"):
        return ALLOW, value
    if value == default or (value < 0 and default < 0):
        # The default asks for nothing: accepted, and it leaves alone what a key with
        # `load` may have set (it is not this key's to shorten either).
        return ALLOW, None
    what = "unloads the model once idle" if value == 0 else "changes how long the model stays"
    return (
        missing_scope(
            "load",
            f"keep_alive {_seconds(value)} {what} for everyone who uses it (its default is "
            f"{_seconds(default)}); that needs the `load` scope, which this key lacks.",
        ),
        None,
    )


def _seconds(value: float) -> str:
    return "forever" if value < 0 else f"{value:g}s"
