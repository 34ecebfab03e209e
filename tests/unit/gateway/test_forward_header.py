"""The signed header of a forwarded request: what it proves, and every way it is refused."""

from __future__ import annotations

import base64
import json
import time

import pytest

from gateway.cluster import FORWARD_TTL_S, body_digest, sign, verify
from policies.principal import Limits, Principal

SECRET = "s" * 40
ALICE = Principal("k_alice", "alice", frozenset({"infer"}), ("tiny-*",), Limits(max_concurrent=1))


def test_a_signed_header_carries_the_principal_hold_and_ceiling_but_no_limits():
    now = time.time()
    verified = verify(SECRET, sign(SECRET, ALICE, "hold-1", 17, now), now)
    assert verified is not None
    forwarded, nonce = verified
    assert forwarded.principal.key_id == "k_alice"
    assert forwarded.principal.scopes == {"infer"}
    assert forwarded.principal.models == ("tiny-*",)
    assert forwarded.principal.limits == Limits()  # decided at the entry, never again
    assert (forwarded.hold, forwarded.max_tokens) == ("hold-1", 17)
    assert len(nonce) == 32


def test_two_signatures_of_the_same_request_have_different_nonces():
    now = time.time()
    first, second = (verify(SECRET, sign(SECRET, ALICE, "", 1, now), now) for _ in range(2))
    assert first is not None and second is not None and first[1] != second[1]


def _tampered(header: str, **changes: object) -> str:
    body, _, mac = header.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{raw}.{mac}"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda now: sign("t" * 40, ALICE, "", 1, now), id="another secret"),
        pytest.param(lambda now: sign(SECRET, ALICE, "", 1, now - FORWARD_TTL_S - 1), id="expired"),
        pytest.param(lambda now: sign(SECRET, ALICE, "", 1, now + 3600), id="from the future"),
        pytest.param(
            lambda now: _tampered(sign(SECRET, ALICE, "", 1, now), s=["admin"]), id="scopes raised"
        ),
        pytest.param(
            lambda now: _tampered(sign(SECRET, ALICE, "", 1, now), k="k_admin"), id="other key"
        ),
        pytest.param(lambda now: sign(SECRET, ALICE, "", 1, now).split(".")[0], id="no signature"),
        pytest.param(lambda now: "", id="empty"),
        pytest.param(lambda now: "...", id="dots"),
        pytest.param(lambda now: "a.b", id="not base64 json"),
        pytest.param(lambda now: "\u00e9.\u00e9", id="not ascii"),
    ],
)
def test_a_header_not_signed_as_sent_or_out_of_date_is_refused(make):
    now = time.time()
    assert verify(SECRET, make(now), now) is None


def test_unknown_scopes_in_a_signed_header_are_dropped():
    now = time.time()
    odd = Principal("k", "k", frozenset({"infer", "root"}), ("*",), Limits())
    verified = verify(SECRET, sign(SECRET, odd, "", 1, now), now)
    assert verified is not None and verified[0].principal.scopes == {"infer"}


def test_the_header_names_its_route_and_body_and_never_carries_admin_or_download():
    now = time.time()
    root = Principal("k", "k", frozenset({"infer", "load", "admin", "download"}), ("*",), Limits())
    header = sign(SECRET, root, "", 1, now, path="/v1/messages", body=b'{"a": 1}')
    verified = verify(SECRET, header, now)
    assert verified is not None
    forwarded = verified[0]
    assert forwarded.principal.scopes == {"infer", "load"}
    assert forwarded.path == "/v1/messages"
    assert forwarded.body_sha256 == body_digest(b'{"a": 1}') != body_digest(b'{"a": 2}')


def test_a_header_with_admin_smuggled_into_its_scopes_is_refused():
    now = time.time()
    assert verify(SECRET, _tampered(sign(SECRET, ALICE, "", 1, now), s=["admin"]), now) is None
