"""The two ends of a forwarded request (``gateway.cluster`` says when and why).

Entry: ``forward`` sends the admitted request to its peer and relays the peer's
answer unchanged; the admission's concurrency slot is held until the last byte,
and its token hold is settled by the peer (or to nothing, if the peer never
answered).  Peer: ``forwarded_admission`` is the admission of a request another
gateway admitted: nothing decided or counted again, its usage recorded here and
its hold settled across gateways.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from litestar import Request
from litestar.response import Stream

from gateway.admission import Admission
from gateway.cluster import Forwarded, passed_back, relay, sign
from gateway.context import AppContext
from gateway.errors import GatewayError, ServiceUnavailable

ErrorFrame = Callable[[GatewayError], bytes]
"""The route's own mid-stream error event (SSE or NDJSON)."""

STREAMED = ("text/event-stream", "application/x-ndjson")


class RemoteHold:
    """The entry gateway's token hold, settled from here (``Counters.settle_ref``)."""

    def __init__(self, ctx: AppContext, key_id: str, ref: str) -> None:
        self.ctx, self.key_id, self.ref = ctx, key_id, ref
        self._settled = False

    def settle(self, real: int) -> None:
        if not self._settled and self.ref:
            self._settled = True
            self.ctx.counters.settle_ref(self.key_id, self.ref, max(0, real))


def forwarded_admission(
    ctx: AppContext, forwarded: Forwarded, model_id: str, route: str
) -> Admission:
    """What a forwarded request holds here: no slot (the entry holds it), the entry's
    token hold, and the usage row to record."""
    principal = forwarded.principal
    hold = RemoteHold(ctx, principal.key_id, forwarded.hold)
    ceiling = forwarded.max_tokens
    return Admission(ctx, principal, model_id, route, hold, ceiling, forwarded=True)


async def forward(
    request: Request[Any, Any, Any], admission: Admission, peer: Any, error_frame: ErrorFrame
) -> Stream:
    """Send the request to ``peer`` and relay its answer (status, type, body)."""
    ctx: AppContext = request.app.state.ctx
    cluster = ctx.cluster
    assert cluster is not None and admission.hold is not None
    hold, ceiling, body = admission.hold.ref, admission.max_tokens, await request.body()
    path = request.url.path
    header = sign(
        cluster.secret, admission.principal, hold, ceiling, time.time(), path=path, body=body
    )
    try:
        response = await cluster.send(
            peer,
            request.method,
            path + (f"?{request.url.query}" if request.url.query else ""),
            list(request.headers.items()),
            body,
            header,
        )
    except (httpx.HTTPError, OSError) as exc:
        admission.release()
        raise ServiceUnavailable(
            f"The gateway that has {admission.model_id} loaded did not answer; retry.",
            code="peer_unavailable",
            retry_after=1,
        ) from exc
    streamed = response.headers.get("content-type", "").startswith(STREAMED)

    def on_error(message: str) -> bytes:
        if not streamed:
            return b""
        return error_frame(ServiceUnavailable(message, code="peer_unavailable"))

    headers = passed_back(response)
    return Stream(
        relay(response, on_error, admission.release),
        status_code=response.status_code,
        media_type=headers.pop("content-type", "application/json"),
        headers=headers,
    )
