"""``GET /metrics``: the Prometheus exposition, behind a credential unless made public.

The exposition names key ids with their traffic, so by default it needs either
``Authorization: Bearer <server.metrics_token>`` (compared in constant time)
or an ``admin``-scope credential (gateway key or JWT); ``server.metrics_public``
serves it to anyone.  No or a bad credential: 401; a valid one without
``admin``: 403.  The route is outside the authentication middleware, so it
authenticates here, with the same authenticator (key lookups off the event
loop).  A scrape reads the gauges and nothing else: the disk gauges are kept
current by ``gateway.disk_gauge``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import metrics
from gateway.auth import presented_credential
from gateway.context import AppContext
from gateway.errors import AuthenticationFailed, PermissionDenied


def _same(presented: str, expected: str) -> bool:
    """Constant time, lengths included (digests of equal size are compared)."""
    return hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


async def authorize_scrape(request: Request, ctx: AppContext) -> None:
    """Raise 401/403 unless the caller may read the metrics."""
    server = ctx.settings.server
    if server.metrics_public:
        return
    credential = presented_credential(
        request.headers.get("authorization"), request.headers.get("x-api-key")
    )
    if server.metrics_token and credential and _same(credential, server.metrics_token):
        return
    if ctx.auth.enabled and not credential:
        raise AuthenticationFailed(
            "GET /metrics needs `Authorization: Bearer <server.metrics_token>` or an admin key."
        )
    if ctx.auth.enabled and credential and credential.startswith("gw-"):
        principal = await asyncio.to_thread(ctx.auth.authenticate, credential)
    else:
        principal = ctx.auth.authenticate(credential)
    if "admin" not in principal.scopes:
        raise PermissionDenied(
            "GET /metrics needs the metrics token or the `admin` scope.",
            code="missing_scope",
            param="admin",
        )


@get("/metrics")
async def prometheus(request: Request) -> Response[bytes]:
    ctx: AppContext = request.app.state.ctx
    await authorize_scrape(request, ctx)
    return Response(
        generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST, status_code=200
    )
