"""``keys`` and ``usage`` commands, run as a user would (``python -m gateway.cli_keys``)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accounts.keys import parse_key
from accounts.sqlite_store import SQLiteAccounts
from tests.support.server import REPO


def keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli_keys", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},  # no GATEWAY_* from the caller's environment
        timeout=60,
    )


def create(data: Path, *args: str) -> tuple[str, str, subprocess.CompletedProcess[str]]:
    result = keys_cli("keys", "create", *args, "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    keys = re.findall(r"^gw-\S+$", result.stdout, re.MULTILINE)
    assert len(keys) == 1, result.stdout
    parsed = parse_key(keys[0])
    assert parsed is not None
    return parsed[0], keys[0], result


def test_create_prints_a_key_once_that_the_store_accepts(tmp_path):
    key_id, full_key, result = create(
        tmp_path,
        "alice",
        "--scopes",
        "infer,load",
        "--models",
        "tiny-*,default",
        "--rpm",
        "60",
        "--download-quota",
        "20GB/day",
        "--expires-in-days",
        "30",
    )
    assert "cannot be shown again" in result.stdout
    with SQLiteAccounts(tmp_path / "gateway.db") as store:
        record = store.authenticate(full_key, time.time())
        assert record is not None and record.id == key_id
        assert record.scopes == {"infer", "load"}
        assert record.models == ("tiny-*", "default")
        assert record.limits.requests_per_minute == 60
        assert record.limits.download_bytes_per_day == 20 * 10**9
        assert record.expires_at is not None and record.expires_at > time.time() + 29 * 86400


def test_list_and_show_never_print_a_secret(tmp_path):
    key_id, full_key, _ = create(tmp_path, "bob", "--tpm", "1000")
    secret = parse_key(full_key)[1]
    for args in (["keys", "list"], ["keys", "show", key_id], ["usage"]):
        result = keys_cli(*args, "--data-dir", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert secret not in result.stdout and "gw-" not in result.stdout
    listing = keys_cli("keys", "list", "--data-dir", str(tmp_path)).stdout
    assert re.search(rf"^{key_id}\s+bob\s+infer\s+\*\s+tpm=1000\s", listing, re.MULTILINE)


def test_update_limits_and_revoke(tmp_path):
    key_id, full_key, _ = create(tmp_path, "carol", "--rpm", "5", "--tokens-per-day", "100")
    result = keys_cli(
        "keys", "update", key_id, "--rpm", "none", "--loads-per-hour", "2",
        "--models", "m1", "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with SQLiteAccounts(tmp_path / "gateway.db") as store:
        record = store.authenticate(full_key, time.time())
        assert record is not None
        assert record.limits.requests_per_minute is None
        assert record.limits.tokens_per_day == 100  # untouched
        assert record.limits.loads_per_hour == 2
        assert record.models == ("m1",)
        store.record_usage(key_id, "m1", "/v1/chat/completions", 3, 4, 200, 10, time.time())

    usage = keys_cli("usage", "--key", key_id, "--since-days", "1", "--data-dir", str(tmp_path))
    assert re.search(rf"{key_id}\s+carol\s+m1\s+1\s+3\s+4\s+0", usage.stdout), usage.stdout

    result = keys_cli("keys", "revoke", key_id, "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    with SQLiteAccounts(tmp_path / "gateway.db") as store:
        assert store.authenticate(full_key, time.time()) is None
    shown = keys_cli("keys", "show", key_id, "--data-dir", str(tmp_path)).stdout
    assert "active:   no" in shown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "x", "--scopes", "infer,root"], "unknown scope root"),
        (["keys", "create", "x", "--download-quota", "20GB/week"], "20GB/day"),
        (["keys", "create", "x", "--rpm", "lots"], "--rpm"),
        (["keys", "create", "x", "--models", "a,,b"], "--models"),
        (["keys", "update", "00000000"], "nothing to change"),
        (["keys", "create", " "], "name"),
        (["keys", "create", "x", "--expires-in-days", "1e308"], "--expires-in-days"),
        (["keys", "create", "x", "--expires-in-days", "inf"], "at most 3650"),
        (["keys", "create", "x", "--expires-in-days", "nan"], "--expires-in-days"),
        (["keys", "create", "x", "--expires-in-days", "3651"], "at most 3650"),
        (["keys", "create", "x", "--rpm", str(2**63)], "--rpm"),
        (["keys", "create", "x", "--download-quota", "1e400GB/day"], "--download-quota"),
        (["keys", "create", "x", "--download-quota", "infGB/day"], "--download-quota"),
        (["keys", "create", "x", "--download-quota", "nanGB/day"], "--download-quota"),
        (["keys", "update", "00000000", "--tpm", "1" + "0" * 30], "--tpm"),
        (["usage", "--since-days", "1e999"], "--since-days"),
    ],
)
def test_invalid_flags_exit_2_with_a_clear_message(tmp_path, args, message):
    result = keys_cli(*args, "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_id_exits_1(tmp_path):
    for args in (["keys", "show", "00000000"], ["keys", "revoke", "00000000"]):
        result = keys_cli(*args, "--data-dir", str(tmp_path))
        assert result.returncode == 1
        assert "no key with id 00000000" in result.stderr


def test_data_dir_comes_from_the_config_file_too(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{tmp_path / "from-config"}"\n')
    result = keys_cli("--config", str(config), "keys", "create", "dave")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-config" / "gateway.db").is_file()


def test_out_of_range_numbers_store_nothing_and_keys_list_still_works(tmp_path):
    create(tmp_path, "first")
    for flags in (["--expires-in-days", "1e308"], ["--rpm", str(2**64)]):
        refused = keys_cli("keys", "create", "huge", *flags, "--data-dir", str(tmp_path))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
    listing = keys_cli("keys", "list", "--data-dir", str(tmp_path))
    assert listing.returncode == 0, listing.stderr
    assert "first" in listing.stdout and "huge" not in listing.stdout
    with SQLiteAccounts(tmp_path / "gateway.db") as store:
        assert [r.name for r in store.list_keys()] == ["first"]


def test_keys_list_survives_an_infinite_expiry_written_by_an_older_version(tmp_path):
    import sqlite3

    key_id, _, _ = create(tmp_path, "legacy", "--expires-in-days", "30")
    with sqlite3.connect(tmp_path / "gateway.db") as conn:
        conn.execute("UPDATE keys SET expires_at = ? WHERE id = ?", (float("inf"), key_id))
    for args in (["keys", "list"], ["keys", "show", key_id]):
        result = keys_cli(*args, "--data-dir", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert "never" in result.stdout
