"""Settings: defaults that serve, precedence, and errors that name the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.settings import SettingsError, field_docs, load_settings

REPO = Path(__file__).resolve().parents[3]


def test_defaults_serve_the_bundled_model_on_loopback_8080():
    settings = load_settings(environ={})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.models.default == "smollm2-135m-instruct"
    assert settings.server.max_body_bytes == 4 * 1024 * 1024


def test_flags_beat_environment_beat_file(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nport = 7000\nhost = "127.0.0.2"\n[engine]\nload_wait = 3\n')
    env = {"GATEWAY_SERVER_PORT": "7001", "GATEWAY_ENGINE_LOAD_WAIT": "4.5"}
    settings = load_settings(config, environ=env, overrides={"server.port": 7002})
    assert settings.server.port == 7002
    assert settings.server.host == "127.0.0.2"
    assert settings.engine.load_wait == 4.5


def test_config_path_from_environment(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text('data_dir = "/srv/gw"\n')
    assert load_settings(environ={"GATEWAY_CONFIG": str(config)}).data_dir == "/srv/gw"


@pytest.mark.parametrize(
    ("toml", "env", "field"),
    [
        ("[server]\nport = 0\n", {}, "server.port"),
        ('[server]\nport = "http"\n', {}, "server.port"),
        ("[server]\nprot = 80\n", {}, "server"),
        ("[engine]\nload_wait = -1\n", {}, "engine.load_wait"),
        ('[server]\nlog_level = "loud"\n', {}, "server.log_level"),
        ("", {"GATEWAY_SERVER_PROT": "1"}, "GATEWAY_SERVER_PROT"),
        ("", {"GATEWAY_ENGINE_MAX_CHOICES": "many"}, "engine.max_choices"),
        (
            "[engine]\ndefault_max_tokens = 10\nmax_tokens_limit = 5\n",
            {},
            "engine.default_max_tokens",
        ),
        ("[server\n", {}, "gateway.toml"),
        ("[models.catalogue.x]\npinned = true\n", {}, "models.catalogue.x"),
        ('[models.catalogue.x]\npath = "/a"\nrepo = "o/r"\n', {}, "models.catalogue.x"),
        ("", {"GATEWAY_ENGINE_MEMORY_BUDGET": "lots"}, "engine.memory_budget"),
        ("", {"GATEWAY_ENGINE_MEMORY_BUDGET": "-1"}, "engine.memory_budget"),
        ("", {"GATEWAY_ENGINE_DECODING": "fast"}, "engine.decoding"),
        ('[models.catalogue.x]\npath = "/a"\nkv_budget = 0\n', {}, "kv_budget"),
        ('[models.catalogue.x]\npath = "/a"\ndecoding = "both"\n', {}, "decoding"),
    ],
)
def test_invalid_configuration_names_the_field(tmp_path, toml, env, field):
    config = tmp_path / "gateway.toml"
    config.write_text(toml)
    with pytest.raises(SettingsError, match=re.escape(field)):
        load_settings(config, environ=env)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_settings_are_frozen():
    settings = load_settings(environ={})
    with pytest.raises(AttributeError):
        settings.server.port = 1  # type: ignore[misc]


def test_every_setting_is_described_and_documented():
    docs = (REPO / "docs" / "configuration.md").read_text()
    for name, description in field_docs().items():
        assert description, f"{name} has no description"
        assert f"`{name}`" in docs, f"{name} is missing from docs/configuration.md"


def test_example_config_is_valid_and_shows_the_defaults():
    example = load_settings(REPO / "deploy" / "gateway.toml", environ={})
    assert example == load_settings(environ={})


def test_launchd_plist_parses():
    import plistlib

    job = plistlib.loads((REPO / "deploy" / "com.mlx-gateway.plist").read_bytes())
    assert job["ProgramArguments"][-1] == "serve"
