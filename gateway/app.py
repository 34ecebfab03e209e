"""The Litestar application: routes, the error handler and the engine's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.middleware import DefineMiddleware

from accounts.errors import StoreUnavailable
from engine.downloads import DownloadJob
from engine.memory import physical_memory
from engine.registry import Registry, RegistryConfig
from engine.store import ModelStore
from gateway import metrics
from gateway.admission import background
from gateway.auth import Authenticator, AuthMiddleware
from gateway.catalogue import build_store
from gateway.console.pages import template_config
from gateway.console.sessions import Sessions
from gateway.context import AppContext
from gateway.hub import make_downloader
from gateway.observe import MetricEvents, MetricsMiddleware
from gateway.responses import handle_exception
from gateway.routes import (
    admin,
    anthropic,
    health,
    keys,
    models,
    ollama,
    ollama_models,
    openai,
    responses_api,
)
from gateway.routes import metrics as metrics_route
from gateway.settings import Settings, memory_budget_bytes, queue_per_key
from gateway.stores import open_accounts, open_counters
from gateway.tokens import Tokenizers
from policies.principal import Principal

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
        queue_per_key=queue_per_key(engine),
        worker_overhead=engine.worker_overhead_bytes,
        spare_worker=engine.spare_worker,
        decoding=engine.decoding,
    )


def console_routes() -> list[Any]:
    """The console's pages (``/ui``); they authenticate with their session cookie."""
    from gateway.console import operator, own, pages

    return [
        *pages.ROUTES,
        own.overview,
        own.live_limits,
        operator.models_page,
        operator.live_models,
        operator.model_post,
        operator.downloads_page,
        operator.live_downloads,
        operator.download_post,
        operator.download_cancel,
        operator.keys_page,
        operator.key_create,
        operator.key_page,
        operator.key_update,
        operator.key_revoke,
        operator.usage_page,
        operator.events_page,
    ]


async def find_htmx(settings: Settings, ctx: AppContext) -> None:
    """The console's htmx: the configured file, else fetched once into the cache."""
    from gateway.console.assets import fetch_htmx

    if settings.console.htmx_file:
        path = Path(settings.console.htmx_file).expanduser()
        if path.is_file():
            ctx.assets.htmx = path
        else:
            log.warning("console.htmx_file %s does not exist; nothing refreshes live", path)
        return
    ctx.assets.htmx = await asyncio.to_thread(fetch_htmx, settings.data_path / "cache")


def create_app(settings: Settings, store: ModelStore | None = None) -> Litestar:
    store = store if store is not None else build_store(settings)
    registry = Registry(store, registry_config(settings), events=MetricEvents())
    key_store = open_accounts(settings)

    def lookup(credential: str, now: float) -> Principal | None:
        record = key_store.authenticate(credential, now)
        return record.principal() if record is not None else None

    counters = open_counters(settings, key_store)

    def downloaded(job: DownloadJob) -> None:
        if job.bytes_done:
            background(
                key_store.arecord_download(job.key_id, job.plan.repo, job.bytes_done, time.time())
            )

    def downloaded_bytes(key_id: str, nbytes: int) -> None:
        try:
            counters.charge_download(key_id, nbytes, time.time())
        except StoreUnavailable as exc:  # the ledger still gets the job's bytes at its end
            log.warning("download bytes of %s not counted: %s", key_id, exc)
        metrics.download_bytes_total.labels(key_id).inc(nbytes)

    downloader = None
    if settings.downloads.enabled:
        downloader = make_downloader(
            settings,
            on_bytes=downloaded_bytes,
            on_finished=downloaded,
        )
    cluster = None
    if settings.cluster.secret:  # with counters.url (checked with the settings)
        from gateway.cluster import Cluster  # redis-py and httpx only when clustered

        cluster = Cluster(settings, registry)
    ctx = AppContext(
        settings,
        store,
        registry,
        Authenticator(settings.auth, lookup),
        counters,
        key_store,
        key_store,
        downloader,
        Tokenizers(settings.engine.tokenizer_threads, settings.engine.tokenizer_queue),
        cluster,
        sessions=Sessions(settings.console.session_ttl),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        default = store.resolve("default")
        await registry.start()
        if downloader is not None and (removed := downloader.clean_partial()):
            log.warning("removed %d partial download(s) left by an earlier run", removed)
        if settings.models.preload_default and default is not None:
            registry.request_load(default.id)
        elif default is None:
            log.warning("default model %s is not in the catalogue", settings.models.default)
        from gateway.disk_gauge import start_disk_gauges  # refreshed off the event loop

        disk_gauges = start_disk_gauges(downloader)
        if settings.console.enabled:
            background(find_htmx(settings, ctx))
        if cluster is not None:
            await cluster.start()
        try:
            yield
        finally:
            disk_gauges.cancel()
            if cluster is not None:
                await cluster.close()
            await asyncio.shield(registry.close())
            if ctx.tokenizers is not None:
                ctx.tokenizers.close()
            counters.close()
            key_store.close()

    app = Litestar(
        route_handlers=[
            openai.chat_completions,
            openai.completions,
            anthropic.messages,
            responses_api.create_response,
            responses_api.get_response,
            anthropic.count_tokens,
            ollama.chat,
            ollama.generate,
            ollama_models.tags,
            ollama_models.ps,
            ollama_models.show,
            ollama_models.pull,
            ollama_models.remove,
            ollama_models.version,
            ollama_models.root,
            ollama_models.unsupported,
            ollama_models.blobs,
            models.list_models,
            models.retrieve_model,
            health.health,
            health.ready,
            metrics_route.prometheus,
            admin.admin_models,
            admin.admin_model,
            admin.admin_action,
            admin.admin_remove,
            admin.admin_job,
            admin.admin_cancel_job,
            keys.create_key,
            keys.list_keys,
            keys.show_key,
            keys.update_key,
            keys.revoke_key,
            keys.usage,
            *(console_routes() if settings.console.enabled else []),
        ],
        template_config=template_config() if settings.console.enabled else None,
        exception_handlers={Exception: handle_exception},
        middleware=[
            MetricsMiddleware,
            DefineMiddleware(
                AuthMiddleware, exclude=["^/health$", "^/ready$", "^/metrics$", "^/$", "^/ui(/|$)"]
            ),
        ],
        request_max_body_size=settings.server.max_body_bytes,
        lifespan=[lifespan],
        openapi_config=None,
    )
    app.state.ctx = ctx
    return app
