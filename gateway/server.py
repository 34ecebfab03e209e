"""The HTTP server: uvicorn with a header timeout, a body deadline and a connection cap.

uvicorn holds a connection for as long as a client keeps it half-sent, and
accepts connections until the process runs out of file descriptors, after
which it accepts nothing at all.  ``GatewayProtocol`` (uvicorn's h11 protocol,
subclassed) closes that door:

* **Request head**: a connection must send a complete request head within
  ``server.header_timeout`` seconds of opening (or of the first byte of its
  next request on a kept-alive connection); otherwise it is closed, with a 408
  if it had sent part of a head.  A kept-alive connection that sends nothing
  is closed by uvicorn's own ``timeout_keep_alive`` (5 s).
* **Request body**: once the head is in, the body must follow within
  ``header_timeout`` seconds plus one second per ``BODY_RATE`` bytes received,
  so a client that trickles a byte now and then is cut off while a real upload
  is not.  Time during which the server itself stops reading (flow control,
  while the application has not yet asked for the body) does not count.
* **Connections**: at most ``max_connections`` are served at once; one more is
  answered 503 and closed, so that its descriptor is free again within a
  second and the process never reaches its open-files limit (where it would
  accept nothing).  ``server.max_connections = 0`` derives the cap from that
  limit, which ``raise_open_files_limit`` first raises from soft to hard.

Errors at this level are in the OpenAI shape too (``{"error": {...}}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import time
from typing import Any

import h11
import msgspec
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway import metrics
from gateway.openai_schema import ErrorBody, ErrorResponse
from gateway.settings import ServerSettings, Settings

log = logging.getLogger("gateway")

# Bytes per second a request body must keep up, on average, after its grace period.
BODY_RATE = 64 * 1024
# Seconds a refused (over the cap) connection is kept to read what its client sent,
# so that the client reads the 503 rather than a reset (a few at a time: see below).
SHED_LINGER = 1.0
# Descriptors kept for everything but client connections: SQLite (the writer and up
# to 32 pooled readers, three files each), two pipes per worker process, downloads
# (a socket and a file each), the log, the event loop, imports; and the connections
# accepted in one go before any is refused (the event loop accepts up to ``backlog``
# sockets per wake-up: a quarter of the reserve) plus the refused ones lingering (an
# eighth).  At most half of a small limit.
RESERVED_FILES = 256
# Connections the kernel may hold completed but not yet accepted: they cost no
# descriptor until accepted, so the queue is long even when the accept batch is short.
LISTEN_BACKLOG = 2048
# mlx-lm calls setrlimit(RLIMIT_NOFILE, (2048, 4096)) when imported (in the workers),
# which fails when the hard limit is lower.
MLX_LM_FILES = 4096


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one (when lower); the soft limit after.

    macOS refuses values above ``kern.maxfilesperproc`` (and "unlimited"), so halves
    are tried when the hard limit itself is refused.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    while target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            target //= 2
    return soft


def connection_cap(settings: ServerSettings, open_files: int) -> int:
    """``server.max_connections``, or when 0: the open-files limit less what the
    gateway needs for everything else (``RESERVED_FILES``, at most half the limit)."""
    if settings.max_connections:
        return settings.max_connections
    return max(1, open_files - min(RESERVED_FILES, open_files // 2))


def _error(status: int, reason: str, message: str, type_: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection."""
    body = msgspec.json.encode(ErrorResponse(ErrorBody(message, type_, None, code)))
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


TIMED_OUT = _error(
    408,
    "Request Timeout",
    "The request head did not arrive in time (server.header_timeout).",
    "invalid_request_error",
    "request_timeout",
)
BODY_TIMED_OUT = _error(
    408,
    "Request Timeout",
    "The request body arrived too slowly (server.header_timeout).",
    "invalid_request_error",
    "request_timeout",
)
OVER_CAP = _error(
    503,
    "Service Unavailable",
    "The gateway is serving as many connections as it may (server.max_connections); retry.",
    "server_error",
    "server_busy",
)
BAD_REQUEST = msgspec.json.encode(
    ErrorResponse(
        ErrorBody("Invalid HTTP request.", "invalid_request_error", None, "invalid_http_request")
    )
)


class _Tally:
    """Counts closed connections by reason (a metric) and logs them at most every
    ``every`` seconds: an attack must not flood the log."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.counts: dict[str, int] = {}
        self.last = -every

    def add(self, reason: str) -> None:
        metrics.connections_closed_total.labels(reason).inc()
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = time.monotonic()
        if now - self.last >= self.every:
            summary = ", ".join(f"{n} {r}" for r, n in sorted(self.counts.items()))
            log.warning("closed connections (since the last report): %s", summary)
            self.counts.clear()
            self.last = now


CLOSED = _Tally()


class GatewayProtocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines and the cap above (class attributes,
    bound by ``protocol_class``)."""

    header_timeout: float = 30.0
    max_connections: int = 1024
    max_lingering: int = 32  # refused connections at most kept SHED_LINGER seconds
    lingering = 0  # refused connections waiting to close, in this process

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._phase = ""  # "head", "body", or "" when no deadline runs
        self._phase_started = 0.0
        self._phase_bytes = 0
        self._shed = False

    # -- the connection ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._shed = True
            self.transport = transport
            transport.write(OVER_CAP)
            CLOSED.add("over_capacity")
            if GatewayProtocol.lingering >= self.max_lingering:
                transport.close()
                return
            GatewayProtocol.lingering += 1
            self._timer = self.loop.call_later(SHED_LINGER, transport.close)
            return
        super().connection_made(transport)
        metrics.connections_open.inc()
        self._begin("head")

    def data_received(self, data: bytes) -> None:
        if self._shed:  # what it sent is read, so the close is a FIN, not a reset
            self.transport.close()
            return
        self._phase_bytes += len(data)
        super().data_received(data)
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._shed:
            if self._timer is not None:
                GatewayProtocol.lingering -= 1
            self._cancel()
            return
        self._cancel()
        metrics.connections_open.dec()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (a head over its size limit included): 400 in the
        OpenAI shape."""
        self._cancel()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=BAD_REQUEST),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    # -- deadlines ----------------------------------------------------------------------
    def _follow(self) -> None:
        """Start, keep or stop the deadline that fits the client's side of the exchange."""
        state = self.conn.their_state
        if state is h11.IDLE:
            # The first bytes of a kept-alive connection's next request (the keep-alive
            # timer, while it runs, covers the silence before them).
            if self._phase != "head" and self.timeout_keep_alive_task is None:
                self._begin("head", received=len(self.conn.trailing_data[0]))
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._begin("body")
        elif self._phase:
            self._cancel()

    def _begin(self, phase: str, received: int = 0) -> None:
        self._cancel()
        self._phase = phase
        self._phase_started = self.loop.time()
        self._phase_bytes = received
        self._timer = self.loop.call_later(self.header_timeout, self._expire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = ""

    def _expire(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase == "body":
            deadline = self._phase_started + self.header_timeout + self._phase_bytes / BODY_RATE
            wait = deadline - self.loop.time()
            if wait > 0 or self.flow.read_paused:  # still on time, or we stopped reading
                self._timer = self.loop.call_later(max(wait, 0.5), self._expire)
                return
            if self.cycle is not None and not self.cycle.response_started:
                self.transport.write(BODY_TIMED_OUT)
            CLOSED.add("body_timeout")
        else:
            if self._phase_bytes:  # part of a head: say why it ends (silence: just close)
                self.transport.write(TIMED_OUT)
            CLOSED.add("header_timeout")
        self._phase = ""
        self.transport.close()


def protocol_class(
    settings: ServerSettings, max_connections: int, spare_files: int
) -> type[GatewayProtocol]:
    """``GatewayProtocol`` bound to this server's timeout and cap (``spare_files``: the
    descriptors left beyond the cap)."""

    class GatewayHTTP(GatewayProtocol):
        header_timeout = settings.header_timeout

    GatewayHTTP.max_connections = max_connections
    GatewayHTTP.max_lingering = max(0, min(64, spare_files // 8))
    return GatewayHTTP


class GatewayServer(uvicorn.Server):
    """uvicorn's server, its listening sockets' queues lengthened after start: asyncio
    accepts up to ``backlog`` connections per wake-up, each a descriptor before any can
    be refused, so ``backlog`` is kept short and the kernel's queue long."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in getattr(self, "servers", []):
            for listener in server.sockets:
                sock = socket.socket(fileno=listener.fileno())
                try:
                    sock.listen(LISTEN_BACKLOG)
                finally:
                    sock.detach()  # the event loop owns the descriptor


def serve(app: Any, settings: Settings) -> int:
    """Run ``app`` until interrupted; the process's exit status."""
    open_files = raise_open_files_limit()
    cap = connection_cap(settings.server, open_files)
    spare = open_files - cap
    log.info("serving at most %d connections (open-files limit %d)", cap, open_files)
    if spare < 128:
        log.warning(
            "server.max_connections = %d leaves %d of the %d open files for everything "
            "else: the gateway may run out of files",
            cap,
            spare,
            open_files,
        )
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < MLX_LM_FILES:
        log.warning(
            "the hard open-files limit is under %d, which mlx-lm sets for its workers "
            "when it is imported: model loads will fail (raise LimitNOFILE / NumberOfFiles)",
            MLX_LM_FILES,
        )
    metrics.connections_max.set(cap)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        http=protocol_class(settings.server, cap, spare),
        ws="none",  # no WebSocket routes: an upgrade request is an ordinary request
        backlog=max(16, min(2048, spare // 4)),
        timeout_graceful_shutdown=int(settings.engine.stop_timeout) + 1,
    )
    server = GatewayServer(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises SIGINT once stopped
        server.run()
    return 0 if server.started else 3
