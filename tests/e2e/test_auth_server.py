"""Authentication set-ups of a real server: JWTs, first start, auth off, CLI beside it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import jwt
import openai
import pytest

from tests.support.server import REPO, GatewayServer

SECRET = "j" * 64
HELLO = [{"role": "user", "content": "hi"}]


def token(**claims) -> str:
    base = {"sub": "ci-bot", "exp": time.time() + 300, "scope": "infer", "models": ["tiny-*"]}
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


def test_jwt_principals_are_authorized_like_keys(tiny_models_dir, tmp_path):
    env = {
        "GATEWAY_AUTH_JWT_ALGORITHM": "HS256",
        "GATEWAY_AUTH_JWT_SECRET": SECRET,
        "GATEWAY_AUTH_JWT_AUDIENCE": "mlx-gateway",
    }
    server = GatewayServer(tiny_models_dir, tmp_path, default_model="tiny-a", env=env)
    try:
        good = token(aud="mlx-gateway", limits={"rpm": 1})
        with openai.OpenAI(base_url=server.base_url + "/v1", api_key=good, max_retries=0) as sdk:
            assert sdk.chat.completions.create(model="tiny-a", messages=HELLO, max_tokens=2)
            with pytest.raises(openai.RateLimitError):  # the token's own limits apply
                sdk.chat.completions.create(model="tiny-a", messages=HELLO, max_tokens=2)
        for bad in (
            token(aud="mlx-gateway", exp=time.time() - 10),
            token(aud="someone-else"),
            jwt.encode({"sub": "x", "exp": time.time() + 60, "aud": "mlx-gateway"}, None, "none"),
        ):
            response = httpx.get(
                server.base_url + "/v1/models", headers={"Authorization": f"Bearer {bad}"}
            )
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"
    finally:
        server.stop()


def test_first_start_prints_an_admin_key_once(tiny_models_dir, tmp_path):
    first = GatewayServer(tiny_models_dir, tmp_path, default_model="tiny-a", create_admin=False)
    try:
        printed = re.findall(r"gw-[0-9a-f]{8}-[A-Za-z0-9_-]+", first.log_tail(200))
        assert len(printed) == 1
        admin = printed[0]
        response = httpx.get(
            first.base_url + "/admin/models", headers={"Authorization": f"Bearer {admin}"}
        )
        assert response.status_code == 200
    finally:
        first.stop()
    second = GatewayServer(tiny_models_dir, tmp_path, default_model="tiny-a", create_admin=False)
    try:
        assert "Created the first admin key" not in second.log_tail(200)
        assert not re.findall(r"gw-[0-9a-f]{8}-", second.log_tail(200))
    finally:
        second.stop()


def test_auth_off_on_loopback_warns_loudly_and_serves(tiny_models_dir, tmp_path):
    server = GatewayServer(
        tiny_models_dir,
        tmp_path,
        default_model="tiny-a",
        env={"GATEWAY_AUTH_ENABLED": "false"},
        create_admin=False,
    )
    try:
        assert "AUTHENTICATION IS DISABLED" in server.log_tail(200)
        assert httpx.get(server.base_url + "/v1/models").status_code == 200
    finally:
        server.stop()


def test_auth_off_is_refused_on_a_public_address(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--host",
            "0.0.0.0",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        env={"GATEWAY_AUTH_ENABLED": "false", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "auth.enabled" in result.stderr


def test_cli_manages_keys_while_the_server_runs(tiny_models_dir, tmp_path):
    server = GatewayServer(tiny_models_dir, tmp_path, default_model="tiny-a")
    try:
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "keys",
                "create",
                "from-cli",
                "--models",
                "tiny-*",
                "--scopes",
                "infer",
                "--data-dir",
                str(tmp_path),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ | server.cli_env,
        )
        assert created.returncode == 0, created.stderr
        (key,) = re.findall(r"gw-[0-9a-f]{8}-[A-Za-z0-9_-]+", created.stdout)
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(server.base_url + "/v1/models", headers=headers).status_code == 200
        key_id = key.split("-")[1]
        revoked = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "keys",
                "revoke",
                key_id,
                "--data-dir",
                str(tmp_path),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ | server.cli_env,
        )
        assert revoked.returncode == 0, revoked.stderr
        assert httpx.get(server.base_url + "/v1/models", headers=headers).status_code == 401
    finally:
        server.stop()
