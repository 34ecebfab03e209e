"""Admission: the policy decision for one request, and what it holds until it ends.

``admit`` gathers plain inputs (the principal, the model's resources, a usage
snapshot, ``now``), asks ``policies.evaluate`` and either raises the denial as
an HTTP error (nothing is charged, written or loaded) or counts the request
and returns an ``Admission``.  The admission holds the key's concurrency slot
until ``release`` (idempotent; every exit path calls it) and records the real
token counts with ``record`` (committed to the usage store before the
response's last byte) or ``record_soon`` (a disconnected client: charged what
was generated, committed in the background).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from engine.registry import ModelState
from engine.store import ModelSpec
from gateway.context import AppContext
from gateway.errors import GatewayError, InsufficientStorage, PermissionDenied, RateLimited
from gateway.observe import record_response
from policies.decision import Deny
from policies.evaluate import PolicyRequest, evaluate
from policies.headers import ratelimit_headers
from policies.principal import Principal
from policies.resources import ModelResources

log = logging.getLogger("gateway.admission")
_background: set[asyncio.Task[Any]] = set()


def from_denial(deny: Deny, headers: dict[str, str] | None = None) -> GatewayError:
    """The HTTP error of a policy denial (never mentions other keys)."""
    error: GatewayError
    if deny.status == 429:
        error = RateLimited(deny.message, code=deny.code, retry_after=deny.retry_after)
    elif deny.status == 507:
        error = InsufficientStorage(deny.message, code=deny.code, param="model")
    else:  # 403: the message of a period quota already says when it resets
        error = PermissionDenied(deny.message, code=deny.code, param=deny.details.get("scope"))
        if deny.code == "model_not_allowed":
            error.param = "model"
    error.extra_headers = headers or None
    return error


def resources_of(ctx: AppContext, spec: ModelSpec) -> ModelResources:
    status = ctx.registry.status(spec.id)
    # A model whose worker crashed counts as loaded: bringing it back is recovery,
    # not a caller's decision to load (no `load` scope or load quota needed).
    loaded = status.state in (ModelState.READY, ModelState.LOADING) or status.crashed
    try:
        need = ctx.registry.need(spec.id).total
    except Exception:  # unreadable weights: the load itself will report it
        need = None
    return ModelResources(
        model_id=spec.id,
        loaded=loaded,
        on_disk=spec.on_disk,
        need_bytes=need,
        budget_bytes=ctx.registry.memory_budget,
        pinned_bytes=ctx.registry.pinned_bytes(exclude=spec.id),
    )


@dataclass
class Admission:
    ctx: AppContext
    principal: Principal
    model_id: str
    route: str
    started: float = field(default_factory=time.monotonic)
    released: bool = False
    recorded: bool = False
    first_token: float | None = None
    scope_state: dict[str, Any] | None = None  # the request's state: the access log reads it

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.ctx.counters.finish(self.principal.key_id)

    def _charge(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.recorded = True
        if self.scope_state is not None:
            self.scope_state["prompt_tokens"] = prompt_tokens
            self.scope_state["completion_tokens"] = completion_tokens
        record_response(
            self.route,
            self.model_id,
            self.principal.key_id,
            started=self.started,
            first_token=self.first_token,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        self.ctx.counters.charge_tokens(
            self.principal.key_id, prompt_tokens + completion_tokens, time.time()
        )

    def _row(self, prompt_tokens: int, completion_tokens: int, status: int) -> dict[str, Any]:
        return dict(
            key_id=self.principal.key_id,
            model=self.model_id,
            route=self.route,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            status=status,
            duration_ms=int((time.monotonic() - self.started) * 1000),
            now=time.time(),
        )

    async def record(self, prompt_tokens: int, completion_tokens: int, status: int = 200) -> None:
        """Charge the real counts and commit the usage row (awaited: committed on return)."""
        if self.recorded:
            return
        self._charge(prompt_tokens, completion_tokens)
        if self.ctx.keys is not None:
            await self.ctx.keys.arecord_usage(**self._row(prompt_tokens, completion_tokens, status))

    def record_soon(self, prompt_tokens: int, completion_tokens: int, status: int) -> None:
        """Like ``record`` where awaiting is impossible (a cancelled task): committed soon."""
        if self.recorded:
            return
        self._charge(prompt_tokens, completion_tokens)
        if self.ctx.keys is not None:
            row = self._row(prompt_tokens, completion_tokens, status)
            background(self.ctx.keys.arecord_usage(**row))


def admit(
    ctx: AppContext,
    principal: Principal,
    spec: ModelSpec,
    *,
    requested_tokens: int,
    route: str,
) -> Admission:
    """Decide, in one synchronous step (no await between the snapshot and the count)."""
    now = time.time()
    counters = ctx.counters
    usage = counters.snapshot(principal.key_id, now)
    resources = resources_of(ctx, spec)
    request = PolicyRequest(spec.id, requested_tokens, ctx.registry.typical_request_seconds())
    decision = evaluate(principal, request, usage, resources, now)
    headers = ratelimit_headers(principal.limits, usage, now, requested_tokens)
    if isinstance(decision, Deny):
        raise from_denial(decision, headers)
    status = ctx.registry.status(spec.id)
    will_load = status.state not in (ModelState.READY, ModelState.LOADING) and not status.crashed
    counters.admit(principal.key_id, now, load=will_load)
    if will_load and ctx.keys is not None:
        background(ctx.keys.arecord_load(principal.key_id, spec.id, now))
    return Admission(ctx, principal, spec.id, route)


def background(work: Coroutine[Any, Any, Any]) -> None:
    """Run ``work`` to completion without awaiting it (kept referenced until done)."""
    task = asyncio.get_running_loop().create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)
