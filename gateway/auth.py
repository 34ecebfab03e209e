"""Authentication: who is calling, from ``Authorization: Bearer`` or ``x-api-key``.

A presented credential is either an opaque gateway key (``gw-<id>-<secret>``,
looked up in the key store: hash compared in constant time) or, when
configured, a JWT verified with exactly one configured algorithm and key
(``alg: none`` and algorithm confusion are refused by construction), with
``exp`` required and ``nbf``, ``iss`` and ``aud`` checked.  JWT claims map to
the same principal fields as a key:

    sub                 -> key id ``jwt:<sub>`` (required, a string of 1-124 characters)
    name                -> name (a string; default: sub)
    scope / scopes      -> scopes ("infer load" or ["infer", "load"])
    models              -> allowlist globs, a list of strings (none given: no model)
    limits              -> {"rpm", "tpm", "max_concurrent", "tokens_per_day",
                            "loads_per_hour", "download_bytes_per_day"}: each a
                           non-negative JSON integer

A claim of the wrong type (``null`` included), an unknown limit name or a limit
that is not a non-negative integer refuses the token (401 "Invalid token
claims."): nothing is ignored, so nothing fails open.

Failures never say which part was wrong beyond what the caller needs, and
never echo the credential.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

import jwt
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from accounts.keys import MAX_LIMIT
from accounts.limits import LIMIT_CLAIMS
from gateway.cluster import FORWARD_HEADER
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.settings import AuthSettings, SettingsError
from policies.principal import SCOPES, Limits, Principal

ANONYMOUS = Principal("anonymous", "anonymous", frozenset(SCOPES), ("*",), Limits())

# ``jwt:<sub>`` is the key id usage is recorded under (128 characters at most); a longer
# subject is refused rather than cut, so that two subjects never share an id.
MAX_SUB_LENGTH = 124

KeyLookup = Callable[[str, float], Principal | None]


def presented_credential(authorization: str | None, api_key: str | None) -> str | None:
    if api_key:
        return api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


class Authenticator:
    def __init__(self, settings: AuthSettings, lookup_key: KeyLookup) -> None:
        self.enabled = settings.enabled
        self._lookup_key = lookup_key
        self._settings = settings
        self._jwt_key: Any = None
        if settings.jwt_algorithm == "HS256":
            self._jwt_key = settings.jwt_secret
        elif settings.jwt_algorithm:
            try:
                self._jwt_key = Path(settings.jwt_public_key_file).expanduser().read_text()
            except OSError as exc:
                raise SettingsError(f"auth.jwt_public_key_file: {exc}") from exc

    def authenticate(self, credential: str | None, now: float | None = None) -> Principal:
        """The caller's principal; raises ``AuthenticationFailed`` (401)."""
        if not self.enabled:
            return ANONYMOUS
        if not credential:
            raise AuthenticationFailed(
                "No API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`."
            )
        now = time.time() if now is None else now
        if credential.startswith("gw-"):
            principal = self._lookup_key(credential, now)
            if principal is None:
                raise AuthenticationFailed("Invalid, revoked or expired API key.")
            return principal
        if self._jwt_key is not None and credential.count(".") == 2:
            return self._from_jwt(credential)
        raise AuthenticationFailed("Invalid API key.")

    def _from_jwt(self, token: str) -> Principal:
        settings = self._settings
        try:
            claims = jwt.decode(
                token,
                self._jwt_key,
                algorithms=[settings.jwt_algorithm],
                audience=settings.jwt_audience or None,
                issuer=settings.jwt_issuer or None,
                options={"require": ["exp", "sub"], "verify_aud": bool(settings.jwt_audience)},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed("The token has expired.") from None
        except jwt.PyJWTError:
            raise AuthenticationFailed("Invalid token.") from None
        return principal_from_claims(claims)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """The principal a verified token's claims describe; ``AuthenticationFailed`` (401)
    when a claim has the wrong type.

    A claim is either of its type or the token is refused: a limit of ``1.0``,
    ``"1"``, ``true``, ``-1`` or ``null``, or an unknown limit name, never
    silently becomes "unlimited" (that would fail open).
    """
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUB_LENGTH:
        raise _bad_claims()
    name = claims.get("name", sub)
    if not isinstance(name, str):
        raise _bad_claims()
    given = {claim: _scope_claim(claims[claim]) for claim in ("scopes", "scope") if claim in claims}
    scopes = given.get("scopes", given.get("scope", []))
    models = claims.get("models", [])
    if not _is_string_list(models):
        raise _bad_claims()
    return Principal(
        key_id=f"jwt:{sub}",
        name=name[:128],
        scopes=frozenset(s for s in scopes if s in SCOPES),
        models=tuple(models),
        limits=_limits_claim(claims.get("limits", {})),
    )


def _bad_claims() -> AuthenticationFailed:
    return AuthenticationFailed("Invalid token claims.")


def _is_string_list(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _scope_claim(value: object) -> list[str]:
    """``"infer load"`` or ``["infer", "load"]``."""
    if isinstance(value, str):
        return value.split()
    if _is_string_list(value):
        return list(value)
    raise _bad_claims()


def _limits_claim(value: object) -> Limits:
    """Known limit names with non-negative JSON integers (below ``MAX_LIMIT``)."""
    if not isinstance(value, dict) or set(value) - set(LIMIT_CLAIMS):
        raise _bad_claims()
    for number in value.values():
        if type(number) is not int or not 0 <= number <= MAX_LIMIT:
            raise _bad_claims()
    return Limits(**{LIMIT_CLAIMS[claim]: number for claim, number in value.items()})


class AuthMiddleware(AbstractAuthenticationMiddleware):
    """Authenticates every request but the excluded ones (health, readiness, metrics)."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        ctx = connection.app.state.ctx
        authenticator: Authenticator = ctx.auth
        forward = connection.headers.get(FORWARD_HEADER)
        if forward is not None and ctx.cluster is not None:
            # Another gateway of the cluster admitted this request and signed it.
            forwarded = await ctx.cluster.accept(forward, connection.url.path)
            if forwarded is None:
                raise AuthenticationFailed("Invalid forwarded request.")
            connection.scope.setdefault("state", {})["forwarded"] = forwarded
            return AuthenticationResult(user=forwarded.principal, auth=None)
        credential = presented_credential(
            connection.headers.get("authorization"), connection.headers.get("x-api-key")
        )
        if authenticator.enabled and credential and credential.startswith("gw-"):
            principal = await asyncio.to_thread(authenticator.authenticate, credential)
        else:
            principal = authenticator.authenticate(credential)
        return AuthenticationResult(user=principal, auth=None)


def principal_of(connection: ASGIConnection) -> Principal:
    principal = connection.scope.get("user")
    assert isinstance(principal, Principal), "route not behind AuthMiddleware"
    return principal


def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard of the admin routes: the key needs the ``admin`` scope."""
    if "admin" not in principal_of(connection).scopes:
        raise PermissionDenied(
            "This route needs the `admin` scope.", code="missing_scope", param="admin"
        )
