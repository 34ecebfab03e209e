"""The admission pipeline: the one request path of every generation-like route.

    decode (the route's codec) -> resolve -> authorize -> limits (a pre-check, no I/O)
    -> hub metadata (a model not on disk: sizes and config.json, bounded)
    -> tokenize (its own pool; a prompt that cannot fit is refused here)
    -> limits and budgets, decided and reserved in one synchronous step
    -> only then download -> lease -> generate -> settle

A route is a codec: it decodes its wire format into an ``Ask`` and encodes
what ``gateway.generation`` yields; it never checks anything itself, so the
order of SPEC.md section 2 exists here alone.  Every denial is raised before
any side effect: nothing is loaded, downloaded, charged or written.  The
request's model label (metrics, logs) is ``other`` until the key is known to
be allowed the model, so a caller cannot mint label values.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import msgspec
from litestar import Request

from engine.chat import ToolsNotSupported, uses_tools
from engine.downloads import DownloadJob, DownloadPlan
from engine.memory import MemoryEstimateError, MemoryNeed
from engine.protocol import PLAIN_OUTPUT, ChatMessage, OutputSpec, SamplingParams
from engine.store import ModelSpec
from gateway import hub
from gateway.admission import Admission, decide, is_loaded
from gateway.auth import principal_of
from gateway.cluster import Forwarded, Peer, body_digest
from gateway.context import AppContext
from gateway.errors import (
    AuthenticationFailed,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    PermissionDenied,
    RequestTimeout,
    ServerBusy,
)
from gateway.forwarding import forwarded_admission
from gateway.http_errors import from_denial
from gateway.inference import InferenceCall
from gateway.tokens import TokenizerBusy
from policies.allowlist import model_allowed
from policies.decision import Deny
from policies.principal import Principal
from policies.residency import check_keep_alive
from policies.resources import ModelResources

log = logging.getLogger("gateway.pipeline")


@dataclass(frozen=True)
class Ask:
    """What a codec decoded, free of its wire format."""

    route: str
    model: str  # the name the client sent
    params: SamplingParams
    n: int = 1
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    output: OutputSpec = PLAIN_OUTPUT
    context_limit: int | None = None  # a smaller window than the model's (Ollama's num_ctx)
    keep_alive: float | None = None  # seconds the model stays after this (Ollama's keep_alive)
    load_only: bool = False  # no prompt: only load the model, or unload it (keep_alive 0)
    format_param: str = "response_format"  # what the API calls its output format field

    @property
    def unloads(self) -> bool:
        return self.load_only and self.keep_alive == 0

    @property
    def text_bytes(self) -> int:
        """The UTF-8 bytes the prompt holds at least (tools are prompt text too)."""
        tools = sum(len(t.description.encode()) + len(t.parameters) for t in self.output.tools)
        if self.messages is not None:
            return tools + sum(
                len(m.content.encode())
                + len(m.role)
                + sum(len(c.arguments.encode()) + len(c.name) for c in m.tool_calls)
                for m in self.messages
            )
        return len((self.prompt or "").encode())


@dataclass
class Admitted:
    """An admitted request: what it holds, and the call to run."""

    admission: Admission
    call: InferenceCall
    spec: ModelSpec
    deadline: float  # loop time by which the whole request must end
    peer: Peer | None = None  # the gateway that serves it (``gateway.forwarding``)


def context(request: Request[Any, Any, Any]) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


def _authorize(
    ctx: AppContext, request: Request[Any, Any, Any], principal: Principal, name: str
) -> ModelSpec:
    """Resolve the name and check the key's allowlist (and, for a hub model, every
    download check that needs no I/O); the label becomes the model's id only then."""
    spec = _allowed(ctx, request, principal, name, label=False)
    if not spec.on_disk:
        if spec.repo is None:
            raise ModelUnavailable(f"{spec.id} is not on disk.")
        hub.check_gate(ctx, principal, spec.repo)
    _label(ctx, request, spec)
    return spec


def _allowed(
    ctx: AppContext,
    request: Request[Any, Any, Any],
    principal: Principal,
    name: str,
    *,
    label: bool = True,
) -> ModelSpec:
    """The model ``name`` resolves to, if the key's allowlist has it (else 403)."""
    request.scope.setdefault("state", {})["model"] = "other"
    spec = ctx.resolve_model(name)
    if not model_allowed(principal, spec.id):
        raise PermissionDenied(
            f"This key may not use model {spec.id}.", code="model_not_allowed", param="model"
        )
    if label:
        _label(ctx, request, spec)
    return spec


def _label(ctx: AppContext, request: Request[Any, Any, Any], spec: ModelSpec) -> None:
    """Name the model in metrics and logs: only a model the store knows, so callers
    cannot mint label values (a hub repo gets its label once the hub knows it)."""
    if spec.id in ctx.store.specs:
        request.scope.setdefault("state", {})["model"] = spec.id


def _resources(ctx: AppContext, spec: ModelSpec, need: MemoryNeed | None) -> ModelResources:
    loaded = spec.on_disk and is_loaded(ctx, spec.id)
    if need is None and spec.on_disk and spec.id in ctx.store.specs:
        try:
            need = ctx.registry.need(spec.id)
        except MemoryEstimateError:  # unreadable weights: the load itself will report it
            need = None
    return ModelResources(
        model_id=spec.id,
        loaded=loaded,
        on_disk=spec.on_disk,
        need_bytes=need.total if need else None,
        budget_bytes=ctx.registry.memory_budget,
        pinned_bytes=ctx.registry.pinned_bytes(exclude=spec.id),
    )


def _context_length(ctx: AppContext, spec: ModelSpec, ask: Ask) -> tuple[int, str] | None:
    """The most tokens (prompt plus completion) one choice of a request may take, and
    what bounds it: the serving context, the model's KV budget shared by the ``n``
    choices, or the smaller window the request asked for."""
    try:
        need = ctx.registry.need(spec.id)
    except MemoryEstimateError:
        return None
    n = max(1, ask.n)
    share = need.kv_tokens // n if need.kv_tokens else need.context_length
    bounds = [(need.context_length, f"the model's context of {need.context_length} tokens")]
    if share < need.context_length:
        budget = f"this model's KV budget of {need.kv_tokens} tokens for {n} choice(s)"
        bounds.append((share, budget))
    if ask.context_limit is not None:
        bounds.append((ask.context_limit, f"the requested context of {ask.context_limit} tokens"))
    return min(bounds, key=lambda bound: bound[0])


def _too_long(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="messages", code="context_length_exceeded")


async def check_constraint(ctx: AppContext, ask: Ask) -> None:
    """400 ``unsupported_schema`` when the engine cannot enforce the output constraint
    (checked on the tokenizer threads: a large schema takes CPU time to compile)."""
    output = ask.output
    if output.constraint is None or ctx.tokenizers is None:
        return
    try:
        message = await ctx.tokenizers.check_constraint(output.constraint, output.tools)
    except TokenizerBusy:
        raise ServerBusy(
            "The gateway's tokenizers are busy; retry shortly.", retry_after=1
        ) from None
    if message is not None:
        param = "tool_choice" if output.constraint.kind == "tool_call" else ask.format_param
        raise InvalidRequest(
            f"The output constraint (`{param}`) cannot be enforced: {message}",
            param=param,
            code="unsupported_schema",
        )


async def shape_output(ctx: AppContext, spec: ModelSpec, ask: Ask) -> Ask:
    """The ask with its tool format resolved for this model; 400 ``tools_not_supported``
    when the model can render no tools."""
    output = ask.output
    if ask.messages is None or not uses_tools(ask.messages, output):
        return ask
    if ctx.tokenizers is None:
        return ask
    try:
        fmt = await ctx.tokenizers.tool_format(spec.path, spec.tool_format)
    except ToolsNotSupported as exc:
        raise InvalidRequest(
            f"{spec.id} does not support tools: {exc}.", param="tools", code="tools_not_supported"
        ) from None
    except TokenizerBusy:
        raise ServerBusy(
            "The gateway's tokenizers are busy; retry shortly.", retry_after=1
        ) from None
    except Exception as exc:  # no usable tokenizer: the model's load reports why
        log.warning("cannot read the tool format of %s (%s): the worker will", spec.id, exc)
        return replace(ask, output=msgspec.structs.replace(output, tool_format=spec.tool_format))
    return replace(ask, output=msgspec.structs.replace(output, tool_format=fmt))


async def tokenize(
    ctx: AppContext, spec: ModelSpec, ask: Ask
) -> tuple[tuple[int, ...] | None, Ask]:
    """The prompt's token ids, exactly as the worker would compute them, from the
    gateway's own tokenizer pool, and the ask with ``max_tokens`` clamped to the
    room the prompt leaves in the context (``max_tokens`` is a ceiling).  Only a
    prompt that leaves no room at all is refused, before any worker sees it (and
    without tokenizing it when its size alone says so)."""
    bound = _context_length(ctx, spec, ask)
    if bound is None or ctx.tokenizers is None:
        return None, ask  # unreadable config: the worker clamps or refuses, or the load fails
    context_length, limit = bound
    try:
        if not await ctx.tokenizers.fits(spec.path, ask.text_bytes, context_length - 1):
            raise _too_long(f"the prompt cannot fit {limit}")
        if ask.messages is not None:
            ids = await ctx.tokenizers.chat(spec.path, ask.messages, ask.output)
        else:
            ids = await ctx.tokenizers.text(spec.path, ask.prompt or "")
    except TokenizerBusy:
        raise ServerBusy(
            "The gateway's tokenizers are busy; retry shortly.", retry_after=1
        ) from None
    except InvalidRequest:
        raise
    except Exception as exc:  # no usable tokenizer: the model's load reports why
        log.warning("cannot tokenize for %s (%s): the worker will", spec.id, exc)
        return None, ask
    if not ids:
        raise _too_long("the prompt is empty")
    room = context_length - len(ids)
    if room < 1:
        raise _too_long(f"the prompt has {len(ids)} tokens: it leaves no room in {limit}")
    if ask.params.max_tokens > room:
        ask = replace(ask, params=msgspec.structs.replace(ask.params, max_tokens=room))
    return tuple(ids), ask


def _call(
    ctx: AppContext,
    principal: Principal,
    spec: ModelSpec,
    ask: Ask,
    admission: Admission,
    tokens: tuple[int, ...] | None,
) -> InferenceCall:
    params = ask.params
    if admission.max_tokens < params.max_tokens:  # what the key's token limits afford
        params = msgspec.structs.replace(params, max_tokens=admission.max_tokens)
    return InferenceCall(
        spec.id,
        params,
        ask.n,
        messages=ask.messages,
        prompt=ask.prompt,
        tokens=tokens,
        partition=ctx.cache_partition(principal.key_id),
        may_load=principal.has("load"),
        output=ask.output,
        keep_alive=ask.keep_alive,
    )


def _residency(ctx: AppContext, principal: Principal, spec: ModelSpec, ask: Ask) -> Ask:
    """The ask with its ``keep_alive`` within the operator's ceiling; 403 when it would
    change the model's residency for everyone and the key lacks ``load``."""
    if ask.keep_alive is None:
        return ask
    engine = ctx.settings.engine
    default = engine.keep_alive if spec.keep_alive is None else spec.keep_alive
    decision, value = check_keep_alive(principal, ask.keep_alive, default, engine.keep_alive_max)
    if isinstance(decision, Deny):
        error = from_denial(decision)
        error.param = "keep_alive"
        raise error
    return replace(ask, keep_alive=value)


def _check_room(ctx: AppContext, principal: Principal, plan: DownloadPlan, used: int) -> None:
    """The download's size against the disk and the key's quota, unless it joins a
    running download of the same commit (whose bytes are held already)."""
    assert ctx.downloader is not None
    running = ctx.downloader.active_for(plan.repo)
    if running is None or running.plan.commit != plan.commit:
        room = ctx.downloader.room(used)
        hub.check_download(ctx, principal, plan.repo, plan.total_bytes, now=time.time(), room=room)


async def admit_pull(
    request: Request[Any, Any, Any], ask: Ask
) -> tuple[ModelSpec, Admission, DownloadJob | None]:
    """A download without a load (Ollama's ``/api/pull``), in the order of ``admit``:
    the allowlist and every download check that needs no I/O, the key's limits
    counting nothing, the hub's metadata and the sizes; then the request is counted
    and the job started (or joined) in one synchronous step.  ``None``: the model is
    on disk already, nothing to fetch.  A refused pull consumes nothing."""
    ctx = context(request)
    principal = principal_of(request)
    spec = _allowed(ctx, request, principal, ask.model)
    resources = replace(_resources(ctx, spec, None), loaded=True)  # nothing loads
    if spec.on_disk:
        admission = _decide(ctx, principal, resources, ask, ask.route, 0)
        admission.scope_state = request.scope.setdefault("state", {})
        return spec, admission, None
    if spec.repo is None:
        raise ModelNotFound(
            f"{spec.id} is not on disk and has no source to pull it from.", param="model"
        )
    hub.check_gate(ctx, principal, spec.repo)
    _decide(ctx, principal, resources, ask, ask.route, 0, dry_run=True)
    plan = await hub.fetch_hub_plan(ctx, spec.repo, spec.revision or "main")
    assert ctx.downloader is not None
    used = await ctx.downloader.measure()
    _check_room(ctx, principal, plan, used)
    admission = _decide(ctx, principal, resources, ask, ask.route, 0)
    try:
        job = hub.begin_download(ctx, principal, plan, used)
    except BaseException:
        admission.release()
        raise
    admission.scope_state = request.scope.setdefault("state", {})
    return spec, admission, job


async def _hub_model(
    ctx: AppContext,
    principal: Principal,
    spec: ModelSpec,
    ask: Ask,
    state: dict[str, Any],
) -> tuple[ModelSpec, Admission]:
    """A model not on disk: decide on its metadata, then download it (bytes reserved)."""
    assert spec.repo is not None and ctx.downloader is not None
    plan: DownloadPlan = await hub.fetch_hub_plan(ctx, spec.repo, spec.revision or "main")
    state["model"] = spec.id
    # Sizes first: no file byte read if refused.
    _check_room(ctx, principal, plan, await ctx.downloader.measure())
    need = await hub.fetch_hub_need(ctx, spec, plan)
    used = await ctx.downloader.measure()
    # From here to the job's start: one synchronous step.
    _check_room(ctx, principal, plan, used)
    resources = _resources(ctx, spec, need)
    admission = _decide(ctx, principal, resources, ask, ask.route, ask.text_bytes // 4 + 1)
    try:
        job = hub.begin_download(ctx, principal, plan, used)
        ready = await hub.await_download(ctx, spec, job)
    except BaseException:
        admission.release()
        raise
    return ready, admission


def _decide(
    ctx: AppContext,
    principal: Principal,
    resources: ModelResources,
    ask: Ask,
    route: str,
    prompt_tokens: int,
    *,
    dry_run: bool = False,
) -> Admission:
    admission = decide(
        ctx,
        principal,
        resources,
        prompt_tokens=prompt_tokens,
        max_tokens=ask.params.max_tokens,
        n=ask.n,
        route=route,
        dry_run=dry_run,
    )
    assert admission is not None or dry_run
    return admission  # type: ignore[return-value]


async def admit(request: Request[Any, Any, Any], ask: Ask) -> Admitted:
    """Every check of SPEC.md section 2 in its order, then the download if one is
    needed; returns what the request holds and the call to run (the lease and the
    generation are ``gateway.generation``'s)."""
    ctx = context(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.settings.engine.request_timeout
    principal = principal_of(request)
    forwarded = request.scope.get("state", {}).get("forwarded")
    if forwarded is not None:
        return await _admit_forwarded(request, ask, forwarded, deadline)
    if ask.unloads:
        spec, admission = admit_plain(request, ask)
        call = _call(ctx, principal, spec, ask, admission, None)
        return Admitted(admission, call, spec, deadline)
    spec = _authorize(ctx, request, principal, ask.model)
    ask = _residency(ctx, principal, spec, ask)
    estimate = ask.text_bytes // 4 + 1
    peer = _peer(ctx, spec)
    if peer is not None:
        return await _admit_for_peer(request, ask, spec, peer, deadline)
    # The key's limits first, counting nothing: a refused key causes no I/O at all.
    _decide(ctx, principal, _resources(ctx, spec, None), ask, ask.route, estimate, dry_run=True)
    try:
        async with asyncio.timeout_at(deadline):
            await check_constraint(ctx, ask)
            if not spec.on_disk:
                state = request.scope.setdefault("state", {})
                spec, admission = await _hub_model(ctx, principal, spec, ask, state)
                try:
                    tokens, ask = await _prompt(ctx, spec, ask)
                except BaseException:
                    admission.release()
                    raise
            else:
                tokens, ask = await _prompt(ctx, spec, ask)
                prompt_tokens = len(tokens) if tokens is not None else estimate
                admission = _decide(
                    ctx, principal, _resources(ctx, spec, None), ask, ask.route, prompt_tokens
                )
    except TimeoutError:
        raise RequestTimeout("The request took longer than the gateway allows.") from None
    admission.scope_state = request.scope.setdefault("state", {})
    call = _call(ctx, principal, spec, ask, admission, tokens)
    return Admitted(admission, call, spec, deadline)


def _peer(ctx: AppContext, spec: ModelSpec) -> Peer | None:
    """The gateway to forward to: one that has the model ready while this one has not
    loaded it (nor is loading it)."""
    if ctx.cluster is None or is_loaded(ctx, spec.id):
        return None
    return ctx.cluster.peer_for(spec.id)


async def _admit_for_peer(
    request: Request[Any, Any, Any], ask: Ask, spec: ModelSpec, peer: Peer, deadline: float
) -> Admitted:
    """Admit here, as for a loaded model (the cluster has it loaded: no load is caused,
    counted or needs the ``load`` scope), for ``peer`` to serve."""
    ctx = context(request)
    principal = principal_of(request)
    resources = replace(_resources(ctx, spec, None), loaded=True)
    estimate = ask.text_bytes // 4 + 1
    _decide(ctx, principal, resources, ask, ask.route, estimate, dry_run=True)
    tokens: tuple[int, ...] | None = None
    if spec.on_disk:  # this gateway can count the prompt itself
        try:
            async with asyncio.timeout_at(deadline):
                await check_constraint(ctx, ask)
                tokens, ask = await _prompt(ctx, spec, ask)
        except TimeoutError:
            raise RequestTimeout("The request took longer than the gateway allows.") from None
    prompt_tokens = len(tokens) if tokens is not None else estimate
    admission = _decide(ctx, principal, resources, ask, ask.route, prompt_tokens)
    admission.scope_state = request.scope.setdefault("state", {})
    call = _call(ctx, principal, spec, ask, admission, tokens)
    return Admitted(admission, call, spec, deadline, peer=peer)


async def _admit_forwarded(
    request: Request[Any, Any, Any], ask: Ask, forwarded: Forwarded, deadline: float
) -> Admitted:
    """A request another gateway admitted and forwarded here: the allowlist again (it
    costs nothing), no limit decided or counted again, and never a load for it."""
    ctx = context(request)
    principal = forwarded.principal
    if not hmac.compare_digest(body_digest(await request.body()), forwarded.body_sha256):
        raise AuthenticationFailed("Invalid forwarded request.")
    spec = _allowed(ctx, request, principal, ask.model)
    if not spec.on_disk or not is_loaded(ctx, spec.id):
        raise ModelUnavailable(f"{spec.id} is not loaded on this gateway any more; retry.")
    ask = _residency(ctx, principal, spec, ask)  # the body's keep_alive, within this ceiling
    try:
        async with asyncio.timeout_at(deadline):
            tokens, ask = await _prompt(ctx, spec, ask)
    except TimeoutError:
        raise RequestTimeout("The request took longer than the gateway allows.") from None
    admission = forwarded_admission(ctx, forwarded, spec.id, ask.route)
    admission.scope_state = request.scope.setdefault("state", {})
    call = _call(ctx, principal, spec, ask, admission, tokens)
    return Admitted(admission, replace(call, may_load=False), spec, deadline)


async def _prompt(ctx: AppContext, spec: ModelSpec, ask: Ask) -> tuple[tuple[int, ...] | None, Ask]:
    """The prompt's tokens and the ask shaped for the model (nothing for a load only)."""
    if ask.load_only:
        return None, ask
    ask = await shape_output(ctx, spec, ask)
    return await tokenize(ctx, spec, ask)


def admit_plain(request: Request[Any, Any, Any], ask: Ask) -> tuple[ModelSpec, Admission]:
    """Admit a request that never loads, downloads or generates anything (counting
    tokens, unloading a model): the key's allowlist, its ``keep_alive`` rights and its
    rate and concurrency limits, counted and recorded like any request."""
    ctx = context(request)
    principal = principal_of(request)
    spec = _allowed(ctx, request, principal, ask.model)
    ask = _residency(ctx, principal, spec, ask)
    resources = replace(_resources(ctx, spec, None), loaded=True)  # nothing will load
    admission = decide(
        ctx, principal, resources, prompt_tokens=0, max_tokens=0, n=1, route=ask.route
    )
    assert admission is not None
    admission.scope_state = request.scope.setdefault("state", {})
    return spec, admission


async def count_tokens(request: Request[Any, Any, Any], ask: Ask) -> int:
    """The prompt's tokens with the model's own tokenizer and chat template: a request
    like any other (authorized, rate limited, a usage row), but it never loads or
    downloads anything and generates nothing."""
    ctx = context(request)
    spec = ctx.resolve_model(ask.model)
    if model_allowed(principal_of(request), spec.id) and not spec.on_disk:
        raise InvalidRequest(f"{spec.id} is not on disk: its tokenizer is not available.")
    spec, admission = admit_plain(request, ask)
    try:
        counted = replace(ask, params=msgspec.structs.replace(ask.params, max_tokens=0))
        counted = await shape_output(ctx, spec, counted)
        tokens, _ = await tokenize(ctx, spec, counted)
        if tokens is None:
            raise ModelUnavailable(f"{spec.id}'s tokenizer cannot be loaded.", retry_after=60)
        await admission.record(0, 0, 200)
        return len(tokens)
    finally:
        admission.release()
