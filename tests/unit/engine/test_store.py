"""Model store: name resolution, discovery, memory estimates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.discovery import discover_hf_cache
from engine.memory import MemoryEstimateError, estimate
from engine.store import ModelSpec, ModelStore, discover
from tests.support.fake_models import fake_model_dir


@pytest.fixture
def store(tmp_path) -> ModelStore:
    store = ModelStore()
    store.add(ModelSpec("smol", tmp_path / "smol", aliases=("small",)))
    store.add(ModelSpec("llama", tmp_path / "llama"))
    store.alias("default", "smol")
    store.alias("claude-*", "default")
    store.alias("gpt-4o", "llama")
    return store


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("smol", "smol"),
        ("small", "smol"),
        ("default", "smol"),
        ("claude-3-5-sonnet-20241022", "smol"),
        ("gpt-4o", "llama"),
        ("gpt-4o-mini", None),
        ("claude", None),
        ("unknown", None),
    ],
)
def test_names_resolve_by_id_alias_then_glob_and_unknown_names_to_nothing(store, name, expected):
    spec = store.resolve(name)
    assert (spec.id if spec else None) == expected


def test_alias_loops_do_not_hang(tmp_path):
    store = ModelStore()
    store.alias("a", "b")
    store.alias("b", "a")
    assert store.resolve("a") is None


def test_discovery_takes_only_mlx_model_directories(tmp_path):
    fake_model_dir(tmp_path / "good", 1000)
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text("{}")
    (tmp_path / ".partial-x").mkdir()
    fake_model_dir(tmp_path / ".hidden", 1000)
    assert [s.id for s in discover(tmp_path)] == ["good"]


def test_memory_need_is_weights_plus_kv_cache_plus_overhead(tmp_path):
    path = fake_model_dir(tmp_path / "m", 5_000_000, layers=4, context=2048)
    need = estimate(path, overhead=1000)
    # 2 (K and V) x 4 layers x 2 kv heads x 16 head dim x 2048 tokens x 2 bytes
    assert need.kv_cache == 2 * 4 * 2 * 16 * 2048 * 2
    assert need.weights == 5_000_000
    assert need.total == need.weights + need.kv_cache + 1000


def test_serving_context_length_caps_the_kv_cache(tmp_path):
    path = fake_model_dir(tmp_path / "m", 1000, context=8192)
    assert estimate(path, context_length=1024).kv_cache * 8 == estimate(path).kv_cache


def test_corrupt_weights_header_is_an_estimate_error(tmp_path):
    path = fake_model_dir(tmp_path / "m", 1000)
    (path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(MemoryEstimateError):
        estimate(path)


def make_hf_repo(cache: Path, repo: str, config: dict, tokenizer: dict) -> Path:
    """A repo in the Hugging Face cache layout: blobs, snapshots of symlinks, refs."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    commit = "a" * 40
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir()
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    files = {
        "config.json": json.dumps(config).encode(),
        "tokenizer_config.json": json.dumps(tokenizer).encode(),
        "model.safetensors": (
            fake_model_dir(cache.parent / "tmp" / repo, 10) / "model.safetensors"
        ).read_bytes(),
    }
    for i, (name, data) in enumerate(files.items()):
        blob = folder / "blobs" / f"{i:040x}"
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return snapshot


def test_hf_cache_discovery_keeps_mlx_chat_models_only(tmp_path):
    cache = tmp_path / "hub"
    chat = {"chat_template": "{{ messages }}"}
    llama = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "quantization": {}}
    make_hf_repo(cache, "mlx-community/Llama-3.2-1B-Instruct-4bit", llama, chat)
    make_hf_repo(cache, "mlx-community/all-MiniLM-L6-v2-bf16", {"model_type": "bert"}, chat)
    make_hf_repo(cache, "mlx-community/whisper-tiny", {"model_type": "whisper"}, {})
    make_hf_repo(cache, "mlx-community/Llama-base-4bit", llama, {})  # no chat template
    found = discover_hf_cache(cache)
    assert [s.id for s in found] == ["mlx-community/Llama-3.2-1B-Instruct-4bit"]
    assert found[0].repo == found[0].id and found[0].on_disk
