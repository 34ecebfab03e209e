"""The policy layer is pure: no I/O, no clock, no logging, no metrics."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from policies.decision import ALLOW, Allow, Deny, is_denied

POLICIES = Path(__file__).resolve().parents[3] / "policies"
IMPURE_MODULES = {
    "asyncio",
    "engine",
    "gateway",
    "io",
    "logging",
    "os",
    "pathlib",
    "prometheus_client",
    "random",
    "socket",
    "subprocess",
    "threading",
    "time",
}
CLOCK_CALLS = ("datetime.now", ".now(", "utcnow", "time.time", "monotonic", "date.today")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.py")), ids=lambda p: p.name)
def test_policy_modules_do_no_io_and_read_no_clock(path):
    assert not imports_of(path) & IMPURE_MODULES
    source = path.read_text()
    assert not [call for call in CLOCK_CALLS if call in source]
    assert "print(" not in source


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.py")), ids=lambda p: p.name)
def test_policy_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= 200


def test_decisions_are_plain_values():
    assert Allow() == ALLOW and not is_denied(ALLOW)
    deny = Deny("missing_scope", "This key lacks the `load` scope.", 403, details={"scope": "load"})
    assert is_denied(deny)
    assert (deny.retry_after, deny.reset_at) == (None, None)
    assert deny == Deny(
        "missing_scope", "This key lacks the `load` scope.", 403, details={"scope": "load"}
    )
    assert hash(deny) == hash(Deny("missing_scope", "This key lacks the `load` scope.", 403))
    assert Deny("c", "m", 429).details == {}
