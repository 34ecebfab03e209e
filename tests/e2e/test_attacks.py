"""Hostile input: each case is refused with the right status and changes nothing.

After every case the test proves that nothing was loaded (model states and load
counts), charged or written (usage rows, keys).  Downloads do not exist yet.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.support.server import GatewayServer, open_accounts

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("attack-data")
    config = data / "gateway.toml"
    config.write_text(
        f"""
[models.catalogue."mlx-community/good"]
path = "{tiny_models_dir / "tiny-a"}"

[models.catalogue."mlx-community-evil/x"]
path = "{tiny_models_dir / "tiny-b"}"
"""
    )
    server = GatewayServer(
        tiny_models_dir,
        data,
        default_model="tiny-a",
        env={"GATEWAY_CONFIG": str(config), "GATEWAY_ENGINE_MIN_RESIDENCY": "0"},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(server):
    with server.accounts() as store:
        now = time.time()
        _, expired = store.create_key("expired", expires_at=now - 1, now=now - 100)
        revoked_record, revoked = store.create_key("revoked", now=now)
        store.revoke(revoked_record.id, now)
        _, community = store.create_key(
            "community", scopes=("infer", "load"), models=("mlx-community/*",), now=now
        )
        _, plain = store.create_key("plain", scopes=("infer", "load"), now=now)
    return {"expired": expired, "revoked": revoked, "community": community, "plain": plain}


def side_effects(server: GatewayServer) -> tuple:
    """Everything a refused request must leave as it was."""
    models = httpx.get(server.base_url + "/admin/models", headers=server.headers).json()
    with server.accounts() as store:
        usage = store.usage_summary()
        key_count = store.count_keys()
    return (
        sorted((m["id"], m["state"], m["loads"]) for m in models["data"]),
        sorted((u["key_id"], u["requests"], u["prompt_tokens"]) for u in usage),
        key_count,
    )


def body(model: str = "tiny-a") -> bytes:
    return json.dumps({"model": model, "messages": HELLO, "max_tokens": 2}).encode()


ATTACKS = [
    # (name, key name or raw header value, model, expected status, expected code)
    ("no credential", None, "tiny-a", 401, "invalid_api_key"),
    ("garbled bearer", "Bearer %%%%%", "tiny-a", 401, "invalid_api_key"),
    ("gw prefix only", "Bearer gw-", "tiny-a", 401, "invalid_api_key"),
    ("oversized key", "Bearer gw-" + "a" * 8000, "tiny-a", 401, "invalid_api_key"),
    ("basic scheme", "Basic Z3c6Z3c=", "tiny-a", 401, "invalid_api_key"),
    ("expired key", "expired", "tiny-a", 401, "invalid_api_key"),
    ("revoked key", "revoked", "tiny-a", 401, "invalid_api_key"),
    ("dot-dot path", "plain", "../../etc/passwd", 400, "invalid_request"),
    ("dot-dot inside", "plain", "mlx-community/../tiny-b", 400, "invalid_request"),
    ("absolute path", "plain", "/etc/passwd", 400, "invalid_request"),
    ("NUL byte", "plain", "tiny-a\x00evil", 400, "invalid_request"),
    ("newline", "plain", "tiny-a\n", 400, "invalid_request"),
    ("very long name", "plain", "m" * 5000, 400, "invalid_request"),
    ("odd unicode", "plain", "tіny-a", 400, "invalid_request"),  # Cyrillic i
    ("right-to-left mark", "plain", "tiny-a\u200f", 400, "invalid_request"),
    ("glob must not over-match", "community", "mlx-community-evil/x", 403, "model_not_allowed"),
    ("outside allowlist", "community", "tiny-b", 403, "model_not_allowed"),
    ("unknown in allowed family", "community", "mlx-community/nope", 404, "model_not_found"),
]


@pytest.mark.parametrize(
    ("credential", "model", "status", "code"),
    [case[1:] for case in ATTACKS],
    ids=[case[0] for case in ATTACKS],
)
def test_attack_is_refused_and_changes_nothing(server, keys, credential, model, status, code):
    before = side_effects(server)
    headers = {"content-type": "application/json"}
    if credential in keys:
        headers["Authorization"] = f"Bearer {keys[credential]}"
    elif credential is not None:
        headers["Authorization"] = credential
    response = httpx.post(
        server.base_url + "/v1/chat/completions", content=body(model), headers=headers
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}
    if credential and credential not in keys:
        assert credential.split()[-1] not in response.text or len(credential) < 12
    assert side_effects(server) == before


def test_allowed_glob_still_matches_its_own_family(server, keys):
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=body("mlx-community/good"),
        headers={
            "Authorization": f"Bearer {keys['community']}",
            "content-type": "application/json",
        },
    )
    assert response.status_code == 200


def test_usage_and_quota_survive_a_kill_9_right_after_a_response(tiny_models_dir, tmp_path):
    first = GatewayServer(tiny_models_dir, tmp_path, default_model="tiny-a")
    key = first.create_key("daily", scopes=("infer",))
    with open_accounts(tmp_path) as store:
        store.update(key.split("-")[1], limits={"tokens_per_day": 40})
    response = httpx.post(
        first.base_url + "/v1/chat/completions",
        json={"model": "tiny-a", "messages": HELLO, "max_tokens": 30, "logit_bias": {"2": -100}},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200
    seen = response.json()["usage"]
    first.kill()
    with open_accounts(tmp_path) as store:
        (row,) = store.usage_summary(key_id=key.split("-")[1])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        seen["prompt_tokens"],
        seen["completion_tokens"],
    )
    again = GatewayServer(tiny_models_dir, tmp_path, default_model="tiny-a")
    try:
        refused = httpx.post(
            again.base_url + "/v1/chat/completions",
            content=body(),
            headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "quota_exhausted"
    finally:
        again.stop()
