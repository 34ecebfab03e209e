"""Feeding the metrics: engine events, request outcomes, denials.

``MetricEvents`` is the engine's event sink; ``MetricsMiddleware`` counts every
HTTP response by route, model, key and status; ``record_response`` observes a
generation's durations and tokens.  Only this module and ``gateway.metrics``
know prometheus-client.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from engine.events import EngineEvents
from engine.states import Serving
from gateway import metrics as m
from gateway.http_errors import to_gateway_error

HOLDING = {"loading", "ready", "draining", "unloading"}

events_log = logging.getLogger("gateway.events")


def configure_event_log(stream: Any = None) -> None:
    """One JSON object per line on stderr, whatever the text log's format."""
    if events_log.handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    events_log.addHandler(handler)
    events_log.setLevel(logging.INFO)
    events_log.propagate = False


def emit(event: str, **fields: Any) -> None:
    """A structured log line: the event, a timestamp and plain fields (never a secret)."""
    if events_log.isEnabledFor(logging.INFO):
        record = {"ts": round(time.time(), 3), "event": event, **fields}
        events_log.info(json.dumps(record, separators=(",", ":"), default=str))


KNOWN_ROUTES = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/v1/models",
    "/api/chat",
    "/api/generate",
    "/api/tags",
    "/api/ps",
    "/api/show",
    "/api/pull",
    "/api/delete",
    "/api/version",
    "/health",
    "/ready",
    "/metrics",
}


class MetricEvents(EngineEvents):
    def __init__(self) -> None:
        self._states: dict[str, str] = {}

    def state_changed(self, model_id: str, state: str) -> None:
        self._states[model_id] = state
        m.models_loaded.set(sum(1 for s in self._states.values() if s in HOLDING))

    def loaded(self, model_id: str, result: str, seconds: float, memory_bytes: int) -> None:
        emit(
            "load",
            model=model_id,
            result=result,
            seconds=round(seconds, 3),
            memory_bytes=memory_bytes,
        )
        m.model_loads_total.labels(model_id, result).inc()
        if result == "ok":
            m.model_load_duration_seconds.labels(model_id).observe(seconds)
            m.model_memory_bytes.labels(model_id).set(memory_bytes)

    def serving(self, model_id: str, serving: Serving | None) -> None:
        for mode in ("batched", "interleaved"):
            m.decoding_mode.labels(model_id, mode).set(
                1 if serving is not None and serving.decoding == mode else 0
            )
        s = serving or Serving("", "", 0, 0, 0, 0, 0, 0, 0.0)
        m.decode_batch_size.labels(model_id).set(s.batch)
        m.prefill_queue.labels(model_id).set(s.prefilling + s.waiting)
        m.kv_budget_tokens.labels(model_id).set(s.kv_budget_tokens)
        m.kv_reserved_tokens.labels(model_id).set(s.kv_reserved_tokens)
        m.kv_used_bytes.labels(model_id).set(s.kv_used_bytes)
        m.decode_pause_seconds.labels(model_id).set(s.longest_pause)

    def unloaded(self, model_id: str) -> None:
        emit("unload", model=model_id)
        m.model_unloads_total.labels(model_id).inc()
        m.model_memory_bytes.labels(model_id).set(0)

    def evicted(self, model_id: str, kind: str) -> None:
        emit("evict", model=model_id, kind=kind)
        m.model_evictions_total.labels(model_id, kind).inc()

    def swapped(self, model_id: str) -> None:
        m.model_swaps_total.labels(model_id).inc()

    def drained(self, model_id: str, seconds: float) -> None:
        emit("drain", model=model_id, seconds=round(seconds, 3))
        m.drain_duration_seconds.labels(model_id).observe(seconds)

    def drain_cancelled(self, model_id: str, requests: int) -> None:
        emit("drain_cancelled", model=model_id, requests=requests)
        m.drain_cancelled_requests_total.labels(model_id).inc(requests)

    def worker_crashed(self, model_id: str) -> None:
        emit("worker_crash", model=model_id)
        m.worker_crashes_total.labels(model_id).inc()

    def deadline_missed(self, model_id: str, state: str) -> None:
        emit("deadline_missed", model=model_id, state=state)
        m.deadline_missed_total.labels(model_id, state).inc()

    def queue_changed(self, model_id: str, depth: int) -> None:
        m.queue_depth.labels(model_id).set(depth)

    def waited(self, model_id: str, seconds: float) -> None:
        m.queue_wait_seconds.labels(model_id).observe(seconds)

    def in_flight(self, model_id: str, leases: int) -> None:
        m.in_flight_requests.labels(model_id).set(leases)

    def memory(self, used: int, budget: int) -> None:
        m.memory_used_bytes.set(used)
        m.memory_budget_bytes.set(budget)


def route_label(path: str) -> str:
    if path in KNOWN_ROUTES:
        return path
    for prefix in ("/v1/models/", "/admin/keys", "/admin/models", "/admin/jobs", "/admin/usage"):
        if path.startswith(prefix):
            return prefix.rstrip("/") + ("/{id}" if prefix == "/v1/models/" else "")
    return "other"


def record_denial(code: str) -> None:
    m.policy_denials_total.labels(code).inc()


def record_response(
    route: str,
    model: str,
    key: str,
    *,
    started: float,
    first_token: float | None,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """Durations and tokens of one generation (its status is counted by the middleware)."""
    now = time.monotonic()
    m.request_duration_seconds.labels(route, model).observe(now - started)
    m.prompt_tokens_total.labels(model, key).inc(prompt_tokens)
    m.completion_tokens_total.labels(model, key).inc(completion_tokens)
    if first_token is not None:
        m.time_to_first_token_seconds.labels(model).observe(first_token - started)
        if completion_tokens > 1:
            mean = (now - first_token) / (completion_tokens - 1)
            m.inter_token_latency_seconds.labels(model).observe(mean)


class MetricsMiddleware:
    """ASGI middleware: one ``gateway_requests_total`` per HTTP response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]
        started = time.monotonic()

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception as exc:
            # Raised by an inner middleware (authentication): the app's exception
            # handler answers outside us, with this error's status.
            error = to_gateway_error(exc)
            status[0] = error.status
            scope.setdefault("state", {})["denial"] = error.code
            raise
        finally:
            state = scope.get("state") or {}
            key = str(getattr(scope.get("user"), "key_id", "-"))
            model = str(state.get("model", "-"))
            route = route_label(scope["path"])
            m.requests_total.labels(route, model, key, str(status[0])).inc()
            if route not in ("/health", "/ready", "/metrics"):
                emit(
                    "request",
                    route=route,
                    method=scope.get("method"),
                    status=status[0],
                    key=key,
                    model=model,
                    prompt_tokens=state.get("prompt_tokens"),
                    completion_tokens=state.get("completion_tokens"),
                    seconds=round(time.monotonic() - started, 4),
                    denial=state.get("denial"),
                )
