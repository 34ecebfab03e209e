"""The Litestar application: routes, the error handler and the engine's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar

from engine.registry import Registry, RegistryConfig
from engine.store import ModelSpec, ModelStore, discover
from gateway.context import AppContext
from gateway.responses import handle_exception
from gateway.routes import health, models, openai
from gateway.settings import Settings

log = logging.getLogger("gateway")


def build_store(settings: Settings) -> ModelStore:
    """The catalogue: every model directory under the models dir; the default gets its alias."""
    store = ModelStore()
    for spec in discover(settings.models_path):
        aliases = ("default",) if spec.id == settings.models.default else ()
        store.add(ModelSpec(spec.id, spec.path, aliases, created=spec.created))
    return store


def create_app(settings: Settings, store: ModelStore | None = None) -> Litestar:
    store = store if store is not None else build_store(settings)
    registry = Registry(
        store,
        RegistryConfig(
            load_wait=settings.engine.load_wait,
            prompt_cache_size=settings.engine.prompt_cache_size,
            stop_timeout=settings.engine.stop_timeout,
        ),
    )
    ctx = AppContext(settings, store, registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        default = store.resolve("default")
        if settings.models.preload_default and default is not None:
            registry.start_load(default.id)
        elif default is None:
            log.warning("default model %s is not in the catalogue", settings.models.default)
        try:
            yield
        finally:
            await asyncio.shield(registry.close())

    app = Litestar(
        route_handlers=[
            openai.chat_completions,
            openai.completions,
            models.list_models,
            models.retrieve_model,
            health.health,
            health.ready,
        ],
        exception_handlers={Exception: handle_exception},
        request_max_body_size=settings.server.max_body_bytes,
        lifespan=[lifespan],
        openapi_config=None,
    )
    app.state.ctx = ctx
    return app
