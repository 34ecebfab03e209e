"""Key format, parsing, hashing and quota strings."""

from __future__ import annotations

import re

import pytest

from accounts.keys import hash_secret, new_key, parse_key, verify
from gateway.quotas import parse_quota
from gateway.settings import SettingsError

SECRET = "a" * 20 + "-_" + "B" * 21  # 43 URL-safe characters, with the separators in it


def test_new_key_has_the_documented_format_and_hash():
    key_id, full_key, secret_hash = new_key()
    assert re.fullmatch(r"[0-9a-f]{8}", key_id)
    assert re.fullmatch(rf"gw-{key_id}-[A-Za-z0-9_-]{{43}}", full_key)
    parsed = parse_key(full_key)
    assert parsed is not None and parsed[0] == key_id
    assert secret_hash == hash_secret(parsed[1])
    assert re.fullmatch(r"[0-9a-f]{64}", secret_hash)
    assert parsed[1] not in secret_hash


def test_new_keys_differ():
    keys = {new_key()[1] for _ in range(100)}
    assert len(keys) == 100


def test_parse_splits_on_the_first_two_dashes_only():
    assert parse_key(f"gw-0123abcd-{SECRET}") == ("0123abcd", SECRET)
    assert parse_key(f"gw-0123abcd--{SECRET[1:]}") == ("0123abcd", "-" + SECRET[1:])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "gw",
        "gw-",
        "gw-0123abcd",
        "gw-0123abcd-",
        f"sk-0123abcd-{SECRET}",  # wrong prefix
        f"GW-0123abcd-{SECRET}",
        f"gw-0123ABCD-{SECRET}",  # upper-case id
        f"gw-0123abc-{SECRET}",  # id too short
        f"gw-0123abcde-{SECRET}",  # id too long
        f"gw-0123abcg-{SECRET}",  # not hex
        f"gw-0123abcd-{SECRET[:-1]}",  # secret too short
        f"gw-0123abcd-{SECRET}x",  # secret too long
        f"gw-0123abcd-{SECRET[:-1]}=",  # not URL-safe base64
        f"gw-0123abcd-{SECRET[:-1]} ",
        f" gw-0123abcd-{SECRET}",
        f"Bearer gw-0123abcd-{SECRET}",
        f"gw-0123abcd-{SECRET[:-1]}é",
        None,
        42,
        b"gw-0123abcd-" + SECRET.encode(),
    ],
)
def test_malformed_keys_parse_to_none(text):
    assert parse_key(text) is None


def test_verify_accepts_only_the_right_secret():
    key_id, full_key, stored = new_key()
    parsed = parse_key(full_key)
    assert parsed is not None
    secret = parsed[1]
    assert verify(secret, stored)
    assert not verify(secret[:-1] + ("A" if secret[-1] != "A" else "B"), stored)
    assert not verify("", stored)
    assert not verify(secret, hash_secret(secret + "x"))
    assert not verify(secret, "")


def test_tampered_id_keeps_the_secret_but_names_another_key():
    key_id, full_key, _ = new_key()
    other = "0" * 8 if key_id != "0" * 8 else "1" * 8
    tampered = full_key.replace(key_id, other, 1)
    parsed = parse_key(tampered)
    assert parsed is not None and parsed[0] == other  # the store finds no such key / hash


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20GB/day", 20 * 10**9),
        ("20 GB / day", 20 * 10**9),
        ("1GiB/DAY", 2**30),
        ("500MB/day", 500 * 10**6),
        ("0/day", 0),
    ],
)
def test_parse_quota(text, expected):
    assert parse_quota(text) == expected


@pytest.mark.parametrize("text", ["20GB", "20GB/week", "20GB/hour", "lots/day", "/day", "-1GB/day"])
def test_bad_quotas_raise_naming_the_field(text):
    with pytest.raises(SettingsError, match="download quota"):
        parse_quota(text)
