"""Authentication: who is calling, from ``Authorization: Bearer`` or ``x-api-key``.

A presented credential is either an opaque gateway key (``gw-<id>-<secret>``,
looked up in the key store: hash compared in constant time) or, when
configured, a JWT verified with exactly one configured algorithm and key
(``alg: none`` and algorithm confusion are refused by construction), with
``exp`` required and ``nbf``, ``iss`` and ``aud`` checked.  JWT claims map to
the same principal fields as a key:

    sub                 -> key id ``jwt:<sub>`` (required)
    name                -> name (default: sub)
    scope / scopes      -> scopes ("infer load" or ["infer", "load"])
    models              -> allowlist globs (none given: no model is allowed)
    limits              -> {"rpm", "tpm", "max_concurrent", "tokens_per_day",
                            "loads_per_hour", "download_bytes_per_day"}

Failures never say which part was wrong beyond what the caller needs, and
never echo the credential.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.settings import AuthSettings, SettingsError
from policies.principal import SCOPES, Limits, Principal

ANONYMOUS = Principal("anonymous", "anonymous", frozenset(SCOPES), ("*",), Limits())
LIMIT_CLAIMS = {
    "rpm": "requests_per_minute",
    "tpm": "tokens_per_minute",
    "max_concurrent": "max_concurrent",
    "tokens_per_day": "tokens_per_day",
    "loads_per_hour": "loads_per_hour",
    "download_bytes_per_day": "download_bytes_per_day",
}

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
    scopes_claim = claims.get("scopes", claims.get("scope", ""))
    scopes = scopes_claim.split() if isinstance(scopes_claim, str) else list(scopes_claim)
    models = claims.get("models") or []
    limits = claims.get("limits") or {}
    if not isinstance(models, list) or not isinstance(limits, dict):
        raise AuthenticationFailed("Invalid token claims.")
    values = {
        field: int(limits[claim])
        for claim, field in LIMIT_CLAIMS.items()
        if isinstance(limits.get(claim), int)
    }
    sub = str(claims["sub"])
    return Principal(
        key_id=f"jwt:{sub}"[:128],
        name=str(claims.get("name", sub))[:128],
        scopes=frozenset(s for s in scopes if s in SCOPES),
        models=tuple(str(m) for m in models),
        limits=Limits(**values),
    )


class AuthMiddleware(AbstractAuthenticationMiddleware):
    """Authenticates every request but the excluded ones (health, readiness, metrics)."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        authenticator: Authenticator = connection.app.state.ctx.auth
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
