"""The ``gateway`` command line, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys

from tests.support.server import REPO
from tests.support.tiny_gguf import write_tiny_gguf


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_models_import_converts_a_gguf_that_models_list_then_shows(tmp_path):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", "Q4_0")
    models = tmp_path / "models"
    result = gateway(
        "models", "import", str(gguf), "--name", "tiny-q4", "--models-dir", str(models)
    )
    assert result.returncode == 0, result.stderr
    assert (models / "tiny-q4" / "config.json").is_file()
    listing = gateway("models", "list", "--models-dir", str(models))
    assert "tiny-q4" in listing.stdout


def test_models_import_refuses_to_overwrite_an_existing_model(tmp_path):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", "F16")
    models = tmp_path / "models"
    assert (
        gateway(
            "models", "import", str(gguf), "--name", "m", "--models-dir", str(models)
        ).returncode
        == 0
    )
    again = gateway("models", "import", str(gguf), "--name", "m", "--models-dir", str(models))
    assert again.returncode != 0
    assert "not empty" in again.stderr or "exists" in again.stderr


def test_check_config_reports_the_invalid_field(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text("[server]\nport = 70000\n")
    result = gateway("--config", str(config), "check-config")
    assert result.returncode == 2
    assert "server.port" in result.stderr


def test_serve_refuses_invalid_environment_before_starting():
    result = gateway("serve", env={"GATEWAY_SERVER_PORT": "eighty", "PATH": "/usr/bin"})
    assert result.returncode == 2
    assert "server.port" in result.stderr


def test_check_config_redacts_secrets(tmp_path):
    config = tmp_path / "gateway.toml"
    jwt_secret = "jwt-secret-" + "s" * 40
    config.write_text(
        f'[auth]\njwt_algorithm = "HS256"\njwt_secret = "{jwt_secret}"\n'
        '[server]\nmetrics_token = "scrape-token-123"\n'
    )
    result = gateway("--config", str(config), "check-config")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert jwt_secret not in output and "scrape-token-123" not in output
    assert "auth.jwt_secret = '<redacted>'" in result.stdout
    assert "server.metrics_token = '<redacted>'" in result.stdout
    assert "auth.jwt_algorithm = 'HS256'" in result.stdout  # the rest is shown as it is


def test_check_config_shows_unset_secrets_as_empty(tmp_path):
    result = gateway("check-config", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "auth.jwt_secret = ''" in result.stdout
    assert "server.metrics_token = ''" in result.stdout


def test_serve_and_keys_say_plainly_when_the_shared_store_does_not_answer(tmp_path):
    url = f"postgresql:///gateway?host={tmp_path}&port=1&user=postgres"
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_ACCOUNTS_URL": url, "GATEWAY_ACCOUNTS_TIMEOUT": "1"}
    for command in (["serve", "--port", "1"], ["keys", "list"]):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *command, "--data-dir", str(tmp_path / "data")],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert result.returncode == 3, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("gateway: cannot reach the store of keys and usage"), last
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "data" / "gateway.db").exists()  # no silent SQLite fallback
