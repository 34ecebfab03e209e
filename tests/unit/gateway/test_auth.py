"""Authentication rules: keys, JWTs (and the attacks on them), auth-off mode."""

from __future__ import annotations

import hashlib
import hmac
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import ANONYMOUS, Authenticator, presented_credential
from gateway.errors import AuthenticationFailed
from gateway.settings import AuthSettings
from policies.principal import Limits, Principal

SECRET = "s" * 64
NOW = 1_800_000_000.0
KNOWN = Principal("k1", "known", frozenset({"infer"}), ("*",), Limits())


def lookup(credential: str, now: float) -> Principal | None:
    return KNOWN if credential == "gw-k1-good" else None


def claims(**extra):
    return {"sub": "alice", "exp": time.time() + 600, "scope": "infer load", **extra}


@pytest.fixture
def hs256() -> Authenticator:
    return Authenticator(AuthSettings(jwt_algorithm="HS256", jwt_secret=SECRET), lookup)


@pytest.mark.parametrize(
    ("authorization", "api_key", "expected"),
    [
        ("Bearer abc", None, "abc"),
        ("bearer  abc ", None, "abc"),
        (None, "xyz", "xyz"),
        ("Bearer abc", "xyz", "xyz"),
        ("Basic abc", None, None),
        ("Bearer", None, None),
        (None, None, None),
    ],
)
def test_credential_comes_from_bearer_or_x_api_key(authorization, api_key, expected):
    assert presented_credential(authorization, api_key) == expected


def test_gateway_key_is_looked_up(hs256):
    assert hs256.authenticate("gw-k1-good", NOW) is KNOWN
    for bad in ("gw-k1-bad", "gw-", "", None, "sk-openai-style"):
        with pytest.raises(AuthenticationFailed):
            hs256.authenticate(bad, NOW)


def test_valid_jwt_maps_claims_to_a_principal(hs256):
    token = jwt.encode(
        claims(models=["tiny-*"], limits={"rpm": 5, "tokens_per_day": 1000}, name="Alice"),
        SECRET,
        algorithm="HS256",
    )
    principal = hs256.authenticate(token)
    assert principal.key_id == "jwt:alice" and principal.name == "Alice"
    assert principal.scopes == {"infer", "load"}
    assert principal.models == ("tiny-*",)
    assert principal.limits == Limits(requests_per_minute=5, tokens_per_day=1000)


def test_jwt_without_models_claim_allows_no_model(hs256):
    assert hs256.authenticate(jwt.encode(claims(), SECRET, algorithm="HS256")).models == ()


def test_unknown_scopes_in_a_jwt_are_ignored(hs256):
    token = jwt.encode(claims(scope="infer root"), SECRET, algorithm="HS256")
    assert hs256.authenticate(token).scopes == {"infer"}


@pytest.mark.parametrize(
    "token",
    [
        # Minted when the test runs, not at collection: the suite takes longer than
        # these tokens' windows, and a token minted early would be refused (or
        # accepted) for another reason than the one its name gives.
        pytest.param(
            lambda: jwt.encode(claims(exp=time.time() - 60), SECRET, algorithm="HS256"),
            id="expired",
        ),
        pytest.param(
            lambda: jwt.encode(claims(nbf=time.time() + 600), SECRET, algorithm="HS256"),
            id="not yet valid",
        ),
        pytest.param(lambda: jwt.encode(claims(), "x" * 64, algorithm="HS256"), id="wrong secret"),
        pytest.param(lambda: jwt.encode(claims(), None, algorithm="none"), id="alg none"),
        pytest.param(lambda: jwt.encode(claims(), SECRET, algorithm="HS512"), id="other algorithm"),
        pytest.param(lambda: jwt.encode({"sub": "a"}, SECRET, algorithm="HS256"), id="no exp"),
        pytest.param(
            lambda: jwt.encode({"exp": time.time() + 60}, SECRET, algorithm="HS256"), id="no sub"
        ),
        pytest.param(lambda: "a.b.c", id="garbage"),
    ],
)
def test_bad_jwts_are_refused(hs256, token):
    with pytest.raises(AuthenticationFailed):
        hs256.authenticate(token())


def test_issuer_and_audience_are_checked():
    auth = Authenticator(
        AuthSettings(
            jwt_algorithm="HS256", jwt_secret=SECRET, jwt_issuer="idp", jwt_audience="gateway"
        ),
        lookup,
    )
    good = jwt.encode(claims(iss="idp", aud="gateway"), SECRET, algorithm="HS256")
    assert auth.authenticate(good).key_id == "jwt:alice"
    for bad in (claims(iss="other", aud="gateway"), claims(iss="idp", aud="else"), claims()):
        with pytest.raises(AuthenticationFailed):
            auth.authenticate(jwt.encode(bad, SECRET, algorithm="HS256"))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_asymmetric_jwts_and_algorithm_confusion(tmp_path, algorithm):
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "public.pem"
    path.write_bytes(public_pem)
    auth = Authenticator(
        AuthSettings(jwt_algorithm=algorithm, jwt_public_key_file=str(path)), lookup
    )
    assert auth.authenticate(jwt.encode(claims(), private, algorithm=algorithm)).name == "alice"
    # The classic confusion: an HMAC token "signed" with the public key as the secret.
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    payload = jwt.utils.base64url_encode(b'{"sub":"mallory","exp":9999999999}')
    signature = jwt.utils.base64url_encode(
        hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest()
    )
    forged = (header + b"." + payload + b"." + signature).decode()
    with pytest.raises(AuthenticationFailed):
        auth.authenticate(forged)


def test_auth_off_gives_the_anonymous_principal():
    auth = Authenticator(AuthSettings(enabled=False), lookup)
    assert auth.authenticate(None) is ANONYMOUS


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"limits": {"rpm": 1.0}}, id="limit float even if whole"),
        pytest.param({"limits": {"rpm": 1.5}}, id="limit float"),
        pytest.param({"limits": {"rpm": "1"}}, id="limit string"),
        pytest.param({"limits": {"rpm": True}}, id="limit bool"),
        pytest.param({"limits": {"rpm": -1}}, id="limit negative"),
        pytest.param({"limits": {"rpm": None}}, id="limit null"),
        pytest.param({"limits": {"rpm": 2**53}}, id="limit too large"),
        pytest.param({"limits": {"tokens_per_day": [5]}}, id="limit list"),
        pytest.param({"limits": {"requests_per_minute": 5}}, id="unknown limit name"),
        pytest.param({"limits": [1]}, id="limits not an object"),
        pytest.param({"limits": None}, id="limits null"),
        pytest.param({"scope": 5}, id="scope number"),
        pytest.param({"scope": None}, id="scope null"),
        pytest.param({"scope": ["infer", 5]}, id="scope list with a number"),
        pytest.param({"scopes": "infer", "scope": {"a": 1}}, id="scope object beside scopes"),
        pytest.param({"scopes": {"infer": True}}, id="scopes object"),
        pytest.param({"models": "tiny-*"}, id="models string"),
        pytest.param({"models": ["tiny-*", 3]}, id="models list with a number"),
        pytest.param({"models": None}, id="models null"),
        pytest.param({"name": 7}, id="name number"),
        pytest.param({"name": None}, id="name null"),
        pytest.param({"sub": ""}, id="sub empty"),
        pytest.param({"sub": "x" * 125}, id="sub longer than a key id holds"),
    ],
)
def test_jwt_claims_of_a_wrong_type_refuse_the_token(hs256, extra):
    token = jwt.encode(claims(**{"models": ["*"], **extra}), SECRET, algorithm="HS256")
    with pytest.raises(AuthenticationFailed, match="Invalid token"):
        hs256.authenticate(token)


@pytest.mark.parametrize("sub", [5, ["alice"], {"id": "alice"}])
def test_jwt_subject_must_be_a_string(hs256, sub):
    token = jwt.encode(claims(sub=sub), SECRET, algorithm="HS256")
    with pytest.raises(AuthenticationFailed):
        hs256.authenticate(token)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param({"limits": {"rpm": 0}}, Limits(requests_per_minute=0), id="zero"),
        pytest.param(
            {"limits": {"download_bytes_per_day": 2**53 - 1}},
            Limits(download_bytes_per_day=2**53 - 1),
            id="largest",
        ),
        pytest.param({"limits": {}}, Limits(), id="empty object"),
        pytest.param({}, Limits(), id="no limits claim"),
    ],
)
def test_jwt_integer_limits_are_kept(hs256, extra, expected):
    token = jwt.encode(claims(**extra), SECRET, algorithm="HS256")
    assert hs256.authenticate(token).limits == expected


def test_jwt_scopes_claim_may_be_a_list_or_a_string(hs256):
    as_list = jwt.encode(claims(scopes=["infer", "download"]), SECRET, algorithm="HS256")
    assert hs256.authenticate(as_list).scopes == {"infer", "download"}
    as_text = jwt.encode(claims(scopes="infer admin"), SECRET, algorithm="HS256")
    assert hs256.authenticate(as_text).scopes == {"infer", "admin"}
