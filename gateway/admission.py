"""Admission: the policy decision for one request, and what it holds until it ends.

``decide`` gathers plain inputs (the principal, the model's resources, a usage
snapshot, ``now``), asks ``policies.evaluate`` and either raises the denial as
an HTTP error (nothing is charged, written or loaded) or, in the same
synchronous step, counts the request, takes the key's concurrency slot and
reserves its tokens (prompt + completion ceiling × n).  The ``Admission`` it
returns holds all of that until ``release`` (idempotent; every exit path
calls it): ``record`` settles the reservation to the real counts and commits
the usage row before the response's last byte, ``record_soon`` does the same
where awaiting is impossible (a disconnected client), and a release without a
record settles the reservation to nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from accounts.errors import LimitRaced
from accounts.interfaces import TokenHold
from engine.registry import ModelState
from gateway.context import AppContext
from gateway.errors import RateLimited
from gateway.http_errors import from_denial
from gateway.observe import record_response
from policies.decision import Deny
from policies.evaluate import PolicyRequest, evaluate
from policies.headers import ratelimit_headers
from policies.principal import Principal
from policies.reservations import affordable_max_tokens
from policies.resources import ModelResources

log = logging.getLogger("gateway.admission")
ADMIT_TRIES = 4
"""Decisions per request when shared counters keep reporting a race (then 429)."""
_background: set[asyncio.Task[Any]] = set()


def is_loaded(ctx: AppContext, model_id: str) -> bool:
    """Loaded or loading, or crashed while serving (bringing it back is recovery,
    not a caller's decision to load: no `load` scope or load quota needed)."""
    if model_id not in ctx.store.specs:
        return False
    status = ctx.registry.status(model_id)
    return status.state in (ModelState.READY, ModelState.LOADING) or status.crashed


@dataclass
class Admission:
    ctx: AppContext
    principal: Principal
    model_id: str
    route: str
    hold: TokenHold | None = None
    max_tokens: int = 0  # the completion ceiling the reservation affords
    started: float = field(default_factory=time.monotonic)
    released: bool = False
    recorded: bool = False
    first_token: float | None = None
    scope_state: dict[str, Any] | None = None  # the request's state: the access log reads it
    forwarded: bool = False  # admitted by another gateway: no slot here, its hold

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()

    def release(self) -> None:
        """Give back the concurrency slot, and whatever of the reservation is unused."""
        if not self.released:
            self.released = True
            if self.hold is not None:
                if not self.forwarded:
                    self.ctx.counters.finish(self.hold)
                if not self.recorded:
                    self.hold.settle(0)

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
        if self.hold is not None:
            self.hold.settle(prompt_tokens + completion_tokens)

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
        """Settle to the real counts and commit the usage row (committed on return)."""
        if self.recorded:
            return
        self._charge(prompt_tokens, completion_tokens)
        if self.ctx.ledger is not None:
            await self.ctx.ledger.arecord_usage(
                **self._row(prompt_tokens, completion_tokens, status)
            )

    def record_soon(self, prompt_tokens: int, completion_tokens: int, status: int) -> None:
        """Like ``record`` where awaiting is impossible (a cancelled task): committed soon."""
        if self.recorded:
            return
        self._charge(prompt_tokens, completion_tokens)
        if self.ctx.ledger is not None:
            row = self._row(prompt_tokens, completion_tokens, status)
            background(self.ctx.ledger.arecord_usage(**row))


def decide(
    ctx: AppContext,
    principal: Principal,
    resources: ModelResources,
    *,
    prompt_tokens: int,
    max_tokens: int,
    n: int,
    route: str,
    dry_run: bool = False,
) -> Admission | None:
    """Decide, in one synchronous step (no await between the snapshot and the count).

    The reservation is the prompt plus the completion ceiling × ``n``, the ceiling
    lowered to what the key's token limits afford.  ``dry_run`` only raises the
    denial, counting nothing (a pre-check before any I/O).
    """
    counters = ctx.counters
    will_load = not resources.loaded
    for _ in range(ADMIT_TRIES):
        now = time.time()
        usage = counters.snapshot(principal.key_id, now)
        ceiling = affordable_max_tokens(principal.limits, usage, prompt_tokens, max_tokens, n)
        requested = prompt_tokens + ceiling * n
        typical = ctx.registry.typical_request_seconds()
        request = PolicyRequest(resources.model_id, requested, typical)
        decision = evaluate(principal, request, usage, resources, now)
        headers = ratelimit_headers(principal.limits, usage, now, requested)
        if isinstance(decision, Deny):
            raise from_denial(decision, headers)
        if dry_run:
            return None
        try:
            hold = counters.admit(
                principal.key_id, now, load=will_load, tokens=requested, limits=principal.limits
            )
            break
        except LimitRaced:
            continue  # another gateway counted one of this key's requests: decide again
    else:
        raise RateLimited(
            "Too many of this key's requests arrived at once on several gateways; retry.",
            code="rate_limit_exceeded",
            retry_after=1,
        )
    if will_load and ctx.ledger is not None:
        background(ctx.ledger.arecord_load(principal.key_id, resources.model_id, now))
    return Admission(ctx, principal, resources.model_id, route, hold, ceiling)


def background(work: Coroutine[Any, Any, Any]) -> None:
    """Run ``work`` to completion without awaiting it (kept referenced until done)."""
    task = asyncio.get_running_loop().create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)
