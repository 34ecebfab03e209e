"""A gateway with downloads on, against a ``LocalHub``: the helpers download tests share."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.local_hub import LocalHub
from tests.support.server import GatewayServer

HELLO = [{"role": "user", "content": "hi"}]
REPO_ID = "mlx-community/tiny-dl"
FULL = ("infer", "load", "download")


def serve(
    hub: LocalHub,
    data: Path,
    tiny_models_dir: Path,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
    **downloads: str,
) -> GatewayServer:
    """A gateway downloading from ``hub`` into ``data/hf-cache``; ``downloads`` are
    ``[downloads]`` settings, ``env`` more ``GATEWAY_*`` variables."""
    settings = {"enabled": "true", "allow": '["mlx-community/*"]', **downloads}
    config = data / "gateway.toml"
    data.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "[downloads]\n"
        + "".join(
            f"{k} = {v}\n" if v.startswith(("[", "t", "f")) else f'{k} = "{v}"\n'
            for k, v in settings.items()
        )
        + f'cache_dir = "{data / "hf-cache"}"\n'
    )
    full_env = {
        "GATEWAY_CONFIG": str(config),
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GATEWAY_ENGINE_MIN_RESIDENCY": "0",
        **(env or {}),
    }
    return GatewayServer(tiny_models_dir, data, default_model="tiny-a", env=full_env, port=port)


def ask(
    server: GatewayServer, key: str, model: str = REPO_ID, *, max_tokens: int = 2
) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": model, "messages": HELLO, "max_tokens": max_tokens},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def snapshot_complete(data: Path, repo: str = REPO_ID) -> bool:
    folder = data / "hf-cache" / ("models--" + repo.replace("/", "--")) / "snapshots"
    return any((s / "config.json").exists() for s in folder.glob("*")) if folder.exists() else False


def cache_bytes(data: Path) -> int:
    """Bytes of every regular file in the download cache (what the disk budget counts)."""
    root = data / "hf-cache"
    if not root.exists():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
