"""Build the model store from the settings: catalogue, discovery and aliases."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from engine.bundled import BUNDLED_ID, BUNDLED_TOOL_FORMAT
from engine.discovery import discover_hf_cache
from engine.store import ModelSpec, ModelStore, discover
from gateway.settings import Settings

log = logging.getLogger("gateway")


def build_store(settings: Settings) -> ModelStore:
    """Catalogue entries win over discovered models of the same id; ``default``
    is an alias of ``models.default``; operator aliases (exact or glob) follow."""
    store = ModelStore()
    if settings.models.discover_hf_cache:
        for spec in discover_hf_cache(cache_dir(settings)):
            store.add(spec)
    if settings.models.discover:
        for spec in discover(settings.models_path):
            store.add(spec)
    for model_id, entry in settings.models.catalogue.items():
        path = (
            Path(entry.path).expanduser()
            if entry.path
            else _hub_path(cache_dir(settings), entry.repo)
        )
        store.add(
            ModelSpec(
                id=model_id,
                path=path,
                aliases=tuple(entry.aliases),
                pinned=entry.pinned,
                keep_alive=entry.keep_alive,
                context_length=entry.context_length,
                repo=entry.repo or None,
                revision=entry.revision if entry.repo else None,
                tool_format=entry.tool_format,
                kv_budget=entry.kv_budget,
                decoding=entry.decoding,
            )
        )
    bundled = store.specs.get(BUNDLED_ID)
    if bundled is not None and bundled.tool_format is None:
        store.add(replace(bundled, tool_format=BUNDLED_TOOL_FORMAT))
    store.alias("default", settings.models.default)
    for pattern, target in settings.models.aliases.items():
        store.alias(pattern, target)
    if store.resolve("default") is None:
        log.warning("the default model %s is not in the catalogue", settings.models.default)
    return store


def cache_dir(settings: Settings) -> Path:
    """The Hugging Face cache the gateway downloads into and discovers from."""
    if settings.downloads.cache_dir:
        return Path(settings.downloads.cache_dir).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_path(cache: Path, repo: str) -> Path:
    """Where a hub repo's snapshot is in the local Hugging Face cache (may not exist yet)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    try:
        return folder / "snapshots" / (folder / "refs" / "main").read_text().strip()
    except OSError:
        return folder / "snapshots" / "missing"
