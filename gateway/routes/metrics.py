"""``GET /metrics``: the Prometheus exposition, optionally behind its own bearer token."""

from __future__ import annotations

import hmac

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import metrics
from gateway.context import AppContext
from gateway.errors import AuthenticationFailed


@get("/metrics")
async def prometheus(request: Request) -> Response[bytes]:
    ctx: AppContext = request.app.state.ctx
    token = ctx.settings.server.metrics_token
    if token:
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), token.encode()):
            raise AuthenticationFailed("GET /metrics needs the metrics bearer token.")
    if ctx.downloader is not None:
        disk = ctx.downloader.disk
        metrics.disk_budget_bytes.set(disk.budget)
        metrics.disk_used_bytes.set(disk.used())
    return Response(
        generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST, status_code=200
    )
