"""The store the gateway builds from its settings."""

from __future__ import annotations

from gateway.catalogue import build_store
from gateway.settings import load_settings
from tests.support.fake_models import fake_model_dir


def test_catalogue_discovery_and_aliases_combine(tmp_path):
    models = tmp_path / "models"
    fake_model_dir(models / "found", 10)
    fake_model_dir(models / "pinned-one", 10)
    elsewhere = fake_model_dir(tmp_path / "elsewhere" / "big", 10)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[models]
dir = "{models}"
default = "found"
aliases = {{ "claude-*" = "default", "gpt-4o" = "big" }}

[models.catalogue.big]
path = "{elsewhere}"
aliases = ["large"]
keep_alive = -1
context_length = 512

[models.catalogue.pinned-one]
path = "{models / "pinned-one"}"
pinned = true
"""
    )
    store = build_store(load_settings(config, environ={}))
    assert sorted(store.specs) == ["big", "found", "pinned-one"]
    assert store.resolve("default").id == "found"
    assert store.resolve("claude-3-opus").id == "found"
    assert store.resolve("gpt-4o").id == "big"
    assert store.resolve("large").id == "big"
    big = store.specs["big"]
    assert (big.keep_alive, big.context_length, big.pinned) == (-1, 512, False)
    assert store.specs["pinned-one"].pinned


def test_discovery_can_be_turned_off(tmp_path):
    fake_model_dir(tmp_path / "found", 10)
    settings = load_settings(
        environ={"GATEWAY_MODELS_DIR": str(tmp_path), "GATEWAY_MODELS_DISCOVER": "false"}
    )
    assert build_store(settings).specs == {}
