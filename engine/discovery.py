"""MLX chat models in the Hugging Face cache (``huggingface_hub.scan_cache_dir``).

A cached repo is served when its newest snapshot is an MLX model directory
(safetensors weights and a ``config.json`` with MLX quantization or an
``mlx`` tag in its name) of a text-generation architecture with a chat
template.  Embedding, speech and vision-only models are left out.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from engine.store import ModelSpec, is_mlx_model_dir

log = logging.getLogger("engine.discovery")

# Architectures and model types that are not chat models.
NOT_CHAT = (
    "bert",
    "roberta",
    "xlm",
    "e5",
    "bge",
    "embed",
    "sentence",
    "clip",
    "siglip",
    "whisper",
    "wav2vec",
    "hubert",
    "encodec",
    "speech",
    "tts",
    "audio",
    "vit",
    "dinov",
    "sam",
    "detr",
    "t5encoder",
)


def is_chat_model(snapshot: Path, repo_id: str) -> bool:
    """Heuristic: a causal LM with a chat template, MLX weights, and no sign of
    being an embedding, speech or vision-only model."""
    if not is_mlx_model_dir(snapshot):
        return False
    try:
        config = json.loads((snapshot / "config.json").read_text())
    except (OSError, ValueError):
        return False
    kinds = " ".join(
        [str(config.get("model_type", "")), *map(str, config.get("architectures") or [])]
    ).lower()
    if any(word in kinds for word in NOT_CHAT) or any(w in repo_id.lower() for w in NOT_CHAT):
        return False
    if "ForCausalLM" not in " ".join(map(str, config.get("architectures") or [])) and not (
        config.get("model_type")
    ):
        return False
    mlx = "quantization" in config or "mlx" in repo_id.lower()
    try:
        tokenizer = json.loads((snapshot / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        tokenizer = {}
    has_template = (
        bool(tokenizer.get("chat_template")) or (snapshot / "chat_template.jinja").is_file()
    )
    return mlx and has_template


def discover_hf_cache(cache_dir: Path | None = None) -> list[ModelSpec]:
    """Chat-capable MLX models in the Hugging Face cache, newest snapshot of each."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    found = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified)
        if is_chat_model(Path(newest.snapshot_path), repo.repo_id):
            found.append(
                ModelSpec(
                    id=repo.repo_id,
                    path=Path(newest.snapshot_path),
                    owned_by=repo.repo_id.split("/")[0],
                    created=int(newest.last_modified),
                    repo=repo.repo_id,
                    revision=newest.commit_hash,
                )
            )
    return found
