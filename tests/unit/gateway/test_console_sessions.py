"""Console sessions: opaque, expiring, bounded, ended by sign-out and revocation."""

from __future__ import annotations

from gateway.console.sessions import MAX_PER_KEY, MAX_TOTAL, Sessions, same_token


def test_session_is_found_by_its_token_only_until_it_expires() -> None:
    sessions = Sessions(ttl=60)
    token, session = sessions.create("k1", "gw-k1-secret", now=1000)
    assert sessions.get(token, 1059) == session
    assert sessions.get(token + "x", 1000) is None
    assert sessions.get(token, 1060) is None  # expired, and forgotten
    assert len(sessions) == 0


def test_the_token_is_not_what_is_stored() -> None:
    sessions = Sessions(ttl=60)
    token, _ = sessions.create("k1", "gw-k1-secret", now=0)
    assert token not in sessions._by_digest


def test_signing_in_in_a_loop_keeps_only_the_newest_sessions_of_a_key() -> None:
    sessions = Sessions(ttl=3600)
    tokens = [sessions.create("hostile", "gw-h", now=i)[0] for i in range(MAX_PER_KEY + 30)]
    assert len(sessions) == MAX_PER_KEY
    assert sessions.get(tokens[0], 100) is None
    assert sessions.get(tokens[-1], 100) is not None


def test_sessions_in_all_are_bounded() -> None:
    sessions = Sessions(ttl=3600)
    for i in range(MAX_TOTAL + 10):
        sessions.create(f"k{i}", None, now=0)
    assert len(sessions) == MAX_TOTAL


def test_revoking_a_key_ends_its_sessions_and_no_other() -> None:
    sessions = Sessions(ttl=3600)
    mine, _ = sessions.create("k1", "gw-a", now=0)
    other, _ = sessions.create("k2", "gw-b", now=0)
    assert sessions.end_key("k1") == 1
    assert sessions.get(mine, 1) is None
    assert sessions.get(other, 1) is not None


def test_odd_tokens_find_nothing() -> None:
    sessions = Sessions(ttl=60)
    sessions.create("k1", None, now=0)
    for odd in ("", "x" * 10_000, "\x00", "é"):
        assert sessions.get(odd, 1) is None
        sessions.end(odd)
    assert len(sessions) == 1


def test_same_token_refuses_empty_and_different_tokens() -> None:
    assert same_token("abc", "abc")
    assert not same_token("", "abc")
    assert not same_token(None, "abc")
    assert not same_token("abc", "")
    assert not same_token("abd", "abc")
    assert not same_token("é", "abc")
