"""``GET /v1/models`` and ``GET /v1/models/{id}`` with the gateway's extensions."""

from __future__ import annotations

from litestar import Request, get

from engine.registry import ModelState
from engine.store import ModelSpec
from gateway.auth import principal_of
from gateway.context import AppContext
from gateway.errors import ModelNotFound
from gateway.openai_schema import ModelCard, ModelList
from policies.allowlist import model_allowed


def card(ctx: AppContext, spec: ModelSpec) -> ModelCard:
    status = ctx.registry.status(spec.id)
    if status.state in (ModelState.READY, ModelState.LOADING):
        state = status.state.value
    else:
        state = "on_disk" if spec.on_disk else "absent"
    return ModelCard(
        id=spec.id,
        created=spec.created,
        owned_by=spec.owned_by,
        state=state,
        size_bytes=spec.size_bytes(),
        memory_bytes=status.memory_bytes,
        context_length=spec.serving_context_length(),
        aliases=list(spec.aliases),
    )


@get("/v1/models")
async def list_models(request: Request) -> ModelList:
    """The models this key may use (its allowlist), nothing else."""
    ctx: AppContext = request.app.state.ctx
    principal = principal_of(request)
    return ModelList(
        [card(ctx, spec) for spec in ctx.store.all() if model_allowed(principal, spec.id)]
    )


def known_model(ctx: AppContext, name: str) -> ModelSpec:
    """The catalogue model ``name`` names: 400 when malformed, 404 when the catalogue
    does not hold it.  A hub repo id that is not (yet) downloaded is not a model to
    describe, load or unload (only ``/pull`` takes one), and nothing here creates
    any state for it."""
    spec = ctx.resolve_model(name)
    if ctx.store.specs.get(spec.id) is not spec:
        raise ModelNotFound(
            f"The model `{name[:80]}` does not exist or you do not have access to it.",
            param="model",
        )
    return spec


@get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> ModelCard:
    ctx: AppContext = request.app.state.ctx
    name = model_id.lstrip("/")
    spec = known_model(ctx, name)
    if not model_allowed(principal_of(request), spec.id):
        raise ModelNotFound(
            f"The model `{name}` does not exist or you do not have access to it.", param="model"
        )
    return card(ctx, spec)
