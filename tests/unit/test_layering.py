"""The one-way flow of STYLE.md: gateway -> policies, gateway -> engine, gateway ->
accounts (which may read policies' plain types), nothing back.

Also: the gateway process never imports MLX (only worker processes do).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "policies": {"gateway", "engine", "accounts", "mlx", "mlx_lm"},
    "engine": {"gateway", "policies", "accounts"},
    # Keys, usage and counters: beside the others, may read policies' plain types only.
    "accounts": {"gateway", "engine", "mlx", "mlx_lm"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upstream_layers(package):
    for path in (REPO / package).rglob("*.py"):
        bad = imported_packages(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_gateway_process_never_imports_mlx(tmp_path):
    code = (
        "import sys, gateway.app, gateway.cli, gateway.routes.openai\n"
        "from gateway.settings import load_settings\n"
        f"gateway.app.create_app(load_settings(environ={{'GATEWAY_DATA_DIR': '{tmp_path}'}}))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
