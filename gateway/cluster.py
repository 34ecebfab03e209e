"""Several gateways as one endpoint: who has which model loaded, and forwarding to it.

Each gateway with ``cluster.node_url`` publishes, every ``cluster.heartbeat``
seconds, one Redis key (the counters' Redis)::

    <prefix>node:<node id>   JSON {"url", "models": {id: queued}, "at"}   expires after 3 beats

and reads everyone's, so that choosing a peer on a request's path asks Redis
nothing.  A peer is live while its key exists and its ``at`` is less than three
beats old; a gateway that stops publishing (SIGKILL, network) drops out within
three beats.

Forwarding.  A request for a model this gateway has not loaded (nor is loading),
that a live peer has ready, is admitted here, every check and limit applied and
counted once, as for a loaded model, then sent to the least queued such peer
with the ``X-Gateway-Forward`` header in place of the caller's credential: the
principal (key id, name, its ``infer``/``load`` scopes, models), the token hold
to settle, the route and a digest of the body, an expiry and a nonce, signed with
HMAC-SHA256 under ``cluster.secret``.  The peer verifies the signature, the route
and body, the expiry (``FORWARD_TTL_S``) and that the nonce is new (``SET NX`` in
Redis: a captured header cannot be replayed nor put on another request), then serves the
request without deciding again, never loads for it, records its usage in the
shared ledger and settles the entry's hold.  The entry passes the peer's status,
headers and body through unchanged and releases its concurrency slot at the end.
A peer that fails before answering gives 503 ``peer_unavailable``; one that dies
mid-stream ends the stream with the API's own error event.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis

from engine.registry import ModelState, Registry
from gateway.settings import Settings
from policies.principal import SCOPES, Limits, Principal

log = logging.getLogger("gateway.cluster")

FORWARD_HEADER = "x-gateway-forward"
FORWARD_TTL_S = 30.0
"""How long a signed forward header is valid (the nonce is remembered as long)."""
NODE = "node:"  # after counters.prefix
NONCE = "nonce:"
BEATS_ALIVE = 3


@dataclass(frozen=True)
class Forwarded:
    """What a verified forward header says: who asked, and the entry's hold to settle."""

    principal: Principal
    hold: str  # the entry's ``TokenHold.ref`` ("" when it held no tokens)
    max_tokens: int  # the completion ceiling the key's limits afford, as the entry decided
    path: str = ""  # the route it was signed for
    body_sha256: str = ""  # and the body


@dataclass
class Peer:
    node: str
    url: str
    models: dict[str, int]  # ready model id -> queued requests
    at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


FORWARDED_SCOPES = frozenset({"infer", "load"})
"""What a forwarded principal keeps: a forward never carries ``admin`` or ``download``."""


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def sign(
    secret: str,
    principal: Principal,
    hold: str,
    max_tokens: int,
    now: float,
    *,
    path: str = "",
    body: bytes = b"",
) -> str:
    """The header value: ``<payload>.<signature>``, both base64url; it names the route
    and the body it was signed for."""
    payload = {
        "k": principal.key_id,
        "n": principal.name,
        "s": sorted(principal.scopes & FORWARDED_SCOPES),
        "p": path,
        "d": body_digest(body),
        "m": list(principal.models),
        "h": hold,
        "t": max_tokens,
        "e": now + FORWARD_TTL_S,
        "r": secrets.token_hex(16),
    }
    signed = _b64(json.dumps(payload, separators=(",", ":")).encode())
    mac = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{_b64(mac)}"


def verify(secret: str, value: str, now: float) -> tuple[Forwarded, str] | None:
    """The forward and its nonce if ``value`` is signed with ``secret`` and unexpired,
    else ``None`` (whatever was wrong)."""
    body, _, mac = value.partition(".")
    try:
        expected = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        payload = json.loads(_unb64(body))
        expires, nonce = float(payload["e"]), str(payload["r"])
        principal = Principal(
            key_id=str(payload["k"]),
            name=str(payload["n"]),
            scopes=frozenset(s for s in payload["s"] if s in SCOPES and s in FORWARDED_SCOPES),
            models=tuple(str(m) for m in payload["m"]),
            limits=Limits(),  # decided at the entry; the peer counts nothing
        )
        hold, max_tokens = str(payload["h"]), int(payload["t"])
        path, digest = str(payload["p"]), str(payload["d"])
    except (ValueError, KeyError, TypeError):
        return None
    if not now < expires <= now + FORWARD_TTL_S + 5:
        return None
    return Forwarded(principal, hold, max_tokens, path, digest), nonce


@dataclass
class Cluster:
    """This gateway's view of the others (``None`` in the context without ``cluster.secret``)."""

    settings: Settings
    registry: Registry
    node: str = field(default_factory=lambda: secrets.token_hex(8))
    peers: dict[str, Peer] = field(default_factory=dict)
    _redis: aioredis.Redis | None = None
    _task: asyncio.Task[None] | None = None
    _http: httpx.AsyncClient | None = None

    @property
    def secret(self) -> str:
        return self.settings.cluster.secret

    @property
    def forwards(self) -> bool:
        return self.settings.cluster.forward

    async def start(self) -> None:
        counters = self.settings.counters
        self._redis = aioredis.Redis.from_url(
            counters.url,
            socket_timeout=counters.timeout,
            socket_connect_timeout=counters.timeout,
        )
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), trust_env=False)
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.delete(self._name(NODE, self.node))
            await self._redis.aclose()
        if self._http is not None:
            await self._http.aclose()

    def _name(self, kind: str, rest: str) -> str:
        return self.settings.counters.prefix + kind + rest

    def _mine(self) -> dict[str, int]:
        return {
            s.id: s.queued + s.leases
            for s in self.registry.statuses()
            if s.state is ModelState.READY
        }

    async def _beat(self) -> None:
        beat = self.settings.cluster.heartbeat
        while True:
            try:
                await self._publish_and_read(beat)
            except Exception as exc:  # Redis away: peers age out, forwarding stops
                log.warning("cluster heartbeat failed: %s", type(exc).__name__)
            await asyncio.sleep(beat)

    async def _publish_and_read(self, beat: float) -> None:
        assert self._redis is not None
        if url := self.settings.cluster.node_url:  # else: forwards, takes none
            mine = {"url": url, "models": self._mine(), "at": time.time()}
            ttl_ms = int(beat * BEATS_ALIVE * 1000)
            await self._redis.set(self._name(NODE, self.node), json.dumps(mine), px=ttl_ms)
        start = self._name(NODE, "")
        names = [name async for name in self._redis.scan_iter(match=start + "*")]
        values = await self._redis.mget(names) if names else []
        peers: dict[str, Peer] = {}
        for name, value in zip(names, values, strict=True):
            node = (name.decode() if isinstance(name, bytes) else name)[len(start) :]
            if node == self.node or value is None:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                info = json.loads(value)
                peers[node] = Peer(node, str(info["url"]), dict(info["models"]), float(info["at"]))
        self.peers = peers

    def peer_for(self, model_id: str) -> Peer | None:
        """The least queued live peer that has ``model_id`` ready, else ``None``."""
        if not self.forwards:
            return None
        oldest = time.time() - self.settings.cluster.heartbeat * BEATS_ALIVE
        live = [p for p in self.peers.values() if p.at > oldest and model_id in p.models]
        return min(live, key=lambda p: p.models[model_id], default=None)

    async def accept(self, value: str, path: str) -> Forwarded | None:
        """A verified, fresh, never-seen forward header signed for ``path``, else
        ``None`` (the body is checked against it by ``gateway.pipeline``)."""
        if not self.secret:
            return None
        verified = verify(self.secret, value, time.time())
        if verified is None or self._redis is None or verified[0].path != path:
            return None
        forwarded, nonce = verified
        try:
            fresh = await self._redis.set(self._name(NONCE, nonce), b"1", nx=True, ex=60)
        except Exception:
            return None  # cannot tell a replay: refuse
        return forwarded if fresh else None

    async def send(
        self,
        peer: Peer,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        forward: str,
    ) -> httpx.Response:
        """Open the request to ``peer``; the caller reads and closes the response."""
        assert self._http is not None
        sent = [(k, v) for k, v in headers if k.lower() not in _NOT_FORWARDED]
        sent.append((FORWARD_HEADER, forward))
        request = self._http.build_request(method, peer.url + path, headers=sent, content=body)
        return await self._http.send(request, stream=True)


_NOT_FORWARDED = {
    "authorization",
    "x-api-key",
    FORWARD_HEADER,
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-authorization",
}
PASSED_BACK = {"content-type", "retry-after", "cache-control", "x-request-id"}


async def relay(
    response: httpx.Response, on_error: Callable[[str], bytes], done: Callable[[], None]
) -> AsyncIterator[bytes]:
    """The peer's body as it arrives; ``on_error``'s bytes if the peer fails mid-way;
    ``done`` at the end whatever happens (the entry's slot)."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except (httpx.HTTPError, OSError) as exc:
        log.warning("forwarded request ended early: %s", type(exc).__name__)
        yield on_error("The gateway serving this request stopped answering.")
    finally:
        done()
        await response.aclose()


def passed_back(response: httpx.Response) -> dict[str, Any]:
    return {k: v for k, v in response.headers.items() if k.lower() in PASSED_BACK}
