"""The real coding agents against a running gateway: Claude Code (``claude -p``) over
``/v1/messages`` and Codex (``codex exec``) over ``/v1/responses``.

Their prompts are 40k-80k tokens, far too long to prefill on CPU with the bundled
model, so they are served a tiny scripted model with a 256k-token context through
``claude-*`` and ``gpt-*`` aliases; it answers "Hello from the gateway." to any
prompt.  The CLIs come from npm (``.ci/run`` installs them; this module installs
them into the test cache when they are missing) and the tests skip with a
message where npm is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CACHE
from tests.support.server import REPO, GatewayServer

PACKAGES = {"claude": "@anthropic-ai/claude-code", "codex": "@openai/codex"}
ANSWER = "Hello from the gateway."


@pytest.fixture(scope="module")
def agents() -> Path:
    """The folder whose ``node_modules/.bin`` holds ``claude`` and ``codex``."""
    folder = Path(os.environ.get("GATEWAY_AGENTS_DIR", CACHE / "agents"))
    bins = folder / "node_modules" / ".bin"
    if all((bins / name).exists() for name in PACKAGES):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the agent CLIs cannot be installed")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), *PACKAGES.values()],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    models = tmp_path_factory.mktemp("agent-models")
    spec = {"script": ["Hello", " from the gateway."], "max_position_embeddings": 262144}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.scripted_model",
            str(models / "agent"),
            json.dumps(spec),
        ],
        check=True,
        cwd=REPO,
    )
    data = tmp_path_factory.mktemp("agent-data")
    config = data / "gateway.toml"
    config.write_text('[models]\naliases = { "claude-*" = "agent", "gpt-*" = "agent" }\n')
    gateway = GatewayServer(
        models, data, default_model="agent", env={"GATEWAY_CONFIG": str(config)}
    )
    yield gateway
    gateway.stop()


def requests_logged(server: GatewayServer, route: str) -> list[dict]:
    lines = server.log_path.read_text(errors="replace").splitlines()
    records = [json.loads(line) for line in lines if line.startswith('{"ts"')]
    return [r for r in records if r.get("event") == "request" and r.get("route") == route]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    return keep | {"HOME": str(home), "NO_COLOR": "1"} | extra


def test_claude_code_prints_the_answer_and_every_request_is_answered(agents, server, tmp_path):
    env = clean_env(
        tmp_path,
        ANTHROPIC_BASE_URL=server.base_url,
        ANTHROPIC_API_KEY=server.admin_key,
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    before = len(requests_logged(server, "/v1/messages"))
    done = subprocess.run(
        [str(agents / "node_modules" / ".bin" / "claude"), "-p", "Say hello"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:], server.log_tail())
    assert ANSWER in done.stdout
    made = requests_logged(server, "/v1/messages")[before:]
    assert made, "Claude Code sent its request to the gateway"
    assert {r["status"] for r in made} == {200}, made
    assert max(r["prompt_tokens"] for r in made) > 10_000


def test_codex_prints_the_answer_and_every_request_is_answered(agents, server, tmp_path):
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(
        'model = "gpt-5-codex"\nmodel_provider = "gateway"\n\n'
        "[model_providers.gateway]\n"
        'name = "mlx-gateway"\n'
        f'base_url = "{server.base_url}/v1"\n'
        'env_key = "GATEWAY_API_KEY"\n'
        'wire_api = "responses"\n'
    )
    env = clean_env(home, GATEWAY_API_KEY=server.admin_key, CODEX_HOME=str(home / ".codex"))
    work = tmp_path / "work"
    work.mkdir()
    before = len(requests_logged(server, "/v1/responses"))
    done = subprocess.run(
        [
            str(agents / "node_modules" / ".bin" / "codex"),
            "exec",
            "--skip-git-repo-check",
            "Say hello",
        ],
        env=env,
        cwd=work,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:], server.log_tail())
    assert ANSWER in done.stdout
    made = requests_logged(server, "/v1/responses")[before:]
    assert made, "Codex sent its request to the gateway"
    assert {r["status"] for r in made} == {200}, made
    assert max(r["prompt_tokens"] for r in made) > 10_000
