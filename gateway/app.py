"""The Litestar application: routes, the error handler and the engine's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar

from engine.memory import physical_memory
from engine.registry import Registry, RegistryConfig
from engine.store import ModelStore
from gateway.catalogue import build_store
from gateway.context import AppContext
from gateway.responses import handle_exception
from gateway.routes import admin, health, models, openai
from gateway.settings import Settings, memory_budget_bytes

log = logging.getLogger("gateway")


def registry_config(settings: Settings) -> RegistryConfig:
    engine = settings.engine
    return RegistryConfig(
        load_wait=engine.load_wait,
        prompt_cache_size=engine.prompt_cache_size,
        stop_timeout=engine.stop_timeout,
        memory_budget=memory_budget_bytes(engine.memory_budget, physical=physical_memory()),
        max_loaded_models=engine.max_loaded_models or None,
        min_residency=engine.min_residency,
        keep_alive=engine.keep_alive,
        load_timeout=engine.load_timeout,
        drain_timeout=engine.drain_timeout,
        unload_timeout=engine.unload_timeout,
        max_concurrent=engine.max_concurrent_per_model,
        queue_per_model=engine.queue_per_model,
        queue_total=engine.queue_total,
        worker_overhead=engine.worker_overhead_bytes,
        spare_worker=engine.spare_worker,
    )


def create_app(settings: Settings, store: ModelStore | None = None) -> Litestar:
    store = store if store is not None else build_store(settings)
    registry = Registry(store, registry_config(settings))
    ctx = AppContext(settings, store, registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        default = store.resolve("default")
        await registry.start()
        if settings.models.preload_default and default is not None:
            registry.request_load(default.id)
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
            admin.admin_models,
            admin.admin_model,
            admin.admin_action,
        ],
        exception_handlers={Exception: handle_exception},
        request_max_body_size=settings.server.max_body_bytes,
        lifespan=[lifespan],
        openapi_config=None,
    )
    app.state.ctx = ctx
    return app
