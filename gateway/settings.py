"""One frozen, validated settings object from ``gateway.toml``, the environment and flags.

Precedence, lowest first: built-in defaults, the TOML file (``--config`` or
``GATEWAY_CONFIG``), ``GATEWAY_*`` environment variables, command-line flags.
Environment names are ``GATEWAY_<FIELD>`` for top-level fields and
``GATEWAY_<SECTION>_<FIELD>`` for the others (``GATEWAY_SERVER_PORT=9000``).
Every field carries a one-line description; ``docs/configuration.md`` mirrors
them and a test keeps the two in step.  Invalid input raises ``SettingsError``
naming the field.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway.sizes import SettingsError, memory_budget_bytes, parse_size

ENV_PREFIX = "GATEWAY_"
CONFIG_ENV = "GATEWAY_CONFIG"


def _doc(text: str, **constraints: Any) -> Meta:
    return Meta(description=text, **constraints)


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: Annotated[
        str, _doc("Address to bind. Loopback by default; set 0.0.0.0 only behind auth.")
    ] = "127.0.0.1"
    port: Annotated[int, _doc("TCP port to listen on.", ge=1, le=65535)] = 8080
    max_body_bytes: Annotated[
        int, _doc("Largest request body accepted; larger ones get 413.", ge=1024)
    ] = 4 * 1024 * 1024
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], _doc("Log level of the gateway process.")
    ] = "info"
    metrics_token: Annotated[
        str, _doc("Bearer token GET /metrics accepts besides an admin key (empty: admin key only).")
    ] = ""
    metrics_public: Annotated[
        bool,
        _doc("Serve GET /metrics without any credential (it names key ids: trusted networks)."),
    ] = False
    header_timeout: Annotated[
        float,
        _doc("Seconds a client has to send a request's headers before it is disconnected.", gt=0),
    ] = 30.0
    max_connections: Annotated[
        int,
        _doc(
            "Open connections served at once; more get 503 (0: derived from the open-files limit).",
            ge=0,
        ),
    ] = 0


class CatalogueEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model of the catalogue (``[models.catalogue.ID]``)."""

    path: str = ""
    repo: str = ""
    revision: str = "main"
    aliases: list[str] = []
    pinned: bool = False
    keep_alive: float | None = None
    context_length: Annotated[int, Meta(ge=1)] | None = None
    tool_format: Literal["json_tools"] | None = None
    kv_budget: Annotated[int, Meta(ge=1)] | None = None
    decoding: Literal["auto", "batched", "interleaved"] | None = None


class ModelsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dir: Annotated[
        str, _doc("Directory of MLX model directories; empty means <data_dir>/models.")
    ] = ""
    discover: Annotated[
        bool, _doc("Serve every MLX model directory found directly under models.dir.")
    ] = True
    discover_hf_cache: Annotated[
        bool, _doc("Also serve MLX chat models found in the Hugging Face cache.")
    ] = False
    aliases: Annotated[
        dict[str, str],
        _doc('Alias or glob pattern -> model id, e.g. {"claude-*" = "default"}.'),
    ] = {}
    catalogue: Annotated[
        dict[str, CatalogueEntry],
        _doc(
            "Models by id: path or repo+revision, aliases, pinned, keep_alive, "
            "context_length, tool_format, kv_budget, decoding."
        ),
    ] = {}
    default: Annotated[str, _doc("Catalogue id that the alias `default` and /ready refer to.")] = (
        "smollm2-135m-instruct"
    )
    preload_default: Annotated[
        bool, _doc("Load the default model at start instead of on the first request.")
    ] = True


class EngineSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    load_wait: Annotated[
        float, _doc("Seconds a request waits for its model to load before 503.", gt=0)
    ] = 30.0
    default_max_tokens: Annotated[int, _doc("max_tokens used when a request gives none.", ge=1)] = (
        1024
    )
    max_tokens_limit: Annotated[
        int, _doc("Most tokens one request may generate; a larger max_tokens is lowered.", ge=1)
    ] = 32768
    max_choices: Annotated[int, _doc("Largest `n` (choices per request) accepted.", ge=1)] = 4
    prompt_cache_size: Annotated[
        int, _doc("Recent prompts whose KV cache each worker keeps for reuse.", ge=0)
    ] = 8
    stop_timeout: Annotated[
        float, _doc("Seconds a worker gets to exit on shutdown before it is killed.", gt=0)
    ] = 5.0
    memory_budget: Annotated[
        str, _doc('Memory for loaded models: bytes ("48GiB") or a fraction of RAM ("0.75").')
    ] = "0.75"
    max_loaded_models: Annotated[
        int, _doc("Most models loaded at once; 0 means no limit, 1 is single-model mode.", ge=0)
    ] = 0
    min_residency: Annotated[
        float, _doc("Seconds a model stays loaded before it may be evicted for another.", ge=0)
    ] = 10.0
    keep_alive: Annotated[
        float, _doc("Default idle seconds before a model is unloaded; 0 at once, -1 never.")
    ] = 600.0
    keep_alive_max: Annotated[
        float,
        _doc("Longest keep_alive an Ollama request may ask for (longer is lowered; -1: none)."),
    ] = 3600.0
    load_timeout: Annotated[
        float, _doc("Seconds a load may go without progress before it is failed.", gt=0)
    ] = 120.0
    drain_timeout: Annotated[
        float, _doc("Seconds in-flight requests get to finish before a drain cancels them.", ge=0)
    ] = 30.0
    unload_timeout: Annotated[
        float, _doc("Seconds a worker gets to exit when unloaded before it is killed.", gt=0)
    ] = 10.0
    stream_load_wait: Annotated[
        float, _doc("Seconds a streaming request waits for its model, sending keep-alives.", gt=0)
    ] = 600.0
    decoding: Annotated[
        Literal["auto", "batched", "interleaved"],
        _doc(
            "How concurrent requests on one model decode: one batch, one token each in "
            "turn, or auto (measured at load)."
        ),
    ] = "auto"
    max_concurrent_per_model: Annotated[
        int, _doc("Requests generating at once on one model; more wait in its queue.", ge=1)
    ] = 4
    queue_per_model: Annotated[
        int, _doc("Requests that may wait for one model; more get 503 server_busy.", ge=0)
    ] = 32
    queue_total: Annotated[
        int, _doc("Requests that may wait in all queues together; more get 503.", ge=0)
    ] = 128
    queue_per_key: Annotated[
        int,
        _doc(
            "One key's queued plus running requests per model; more: 429 (0: queue_per_model/4).",
            ge=0,
        ),
    ] = 0
    request_timeout: Annotated[
        float,
        _doc("Seconds any one request may take in all, waits included, before it is ended.", gt=0),
    ] = 1800.0
    tokenizer_threads: Annotated[
        int,
        _doc("Threads that tokenize prompts in the gateway (never the authentication pool).", ge=1),
    ] = 2
    tokenizer_queue: Annotated[
        int, _doc("Prompts that may wait for a tokenizer thread; more get 503 server_busy.", ge=1)
    ] = 64
    prompt_cache_groups: Annotated[
        dict[str, list[str]],
        _doc('Groups of key ids sharing one prompt cache, e.g. {team = ["1e5ca86c", "jwt:ana"]}.'),
    ] = {}
    worker_overhead_bytes: Annotated[
        int, _doc("Memory counted per worker beyond weights and KV cache.", ge=0)
    ] = 256 * 1024 * 1024
    spare_worker: Annotated[
        bool, _doc("Keep one idle worker started, MLX imported, so loads start sooner.")
    ] = True


class AuthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: Annotated[
        bool, _doc("Require an API key or JWT on every API route; off only on loopback.")
    ] = True
    jwt_algorithm: Annotated[
        Literal["", "HS256", "RS256", "ES256"],
        _doc("Accept JWTs signed with this algorithm (empty: gateway keys only)."),
    ] = ""
    jwt_secret: Annotated[str, _doc("HS256 shared secret (prefer GATEWAY_AUTH_JWT_SECRET).")] = ""
    jwt_public_key_file: Annotated[str, _doc("PEM public key file for RS256 or ES256 tokens.")] = ""
    jwt_issuer: Annotated[str, _doc("Required `iss` claim of JWTs (empty: not checked).")] = ""
    jwt_audience: Annotated[str, _doc("Required `aud` claim of JWTs (empty: not checked).")] = ""


class DownloadSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: Annotated[bool, _doc("Allow requests and admins to download models from the hub.")] = (
        False
    )
    allow: Annotated[
        list[str], _doc('Repo globs that may be downloaded, e.g. ["mlx-community/*"].')
    ] = msgspec.field(default_factory=list)
    disk_budget: Annotated[
        str, _doc('Most bytes the downloaded models may take together ("200GiB").')
    ] = "100GiB"
    min_free: Annotated[
        str, _doc("Free disk space always left; a download stops before going below it.")
    ] = "5GiB"
    max_model_size: Annotated[
        str, _doc('Largest single model that may be downloaded ("20GiB").')
    ] = "20GiB"
    cache_dir: Annotated[
        str, _doc("Hugging Face cache to download into; empty: HF_HUB_CACHE's default.")
    ] = ""


class AccountsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: Annotated[
        str,
        _doc(
            'Where keys and usage live: empty for SQLite in data_dir, or "postgresql://..." '
            "shared by several gateways (prefer GATEWAY_ACCOUNTS_URL)."
        ),
    ] = ""
    pool_size: Annotated[
        int, _doc("Most connections to PostgreSQL this gateway keeps open.", ge=1, le=100)
    ] = 8
    timeout: Annotated[
        float,
        _doc("Seconds a call waits for PostgreSQL before the request gets 503.", gt=0, le=60),
    ] = 5.0


class CountersSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: Annotated[
        str,
        _doc(
            "Where the short windows and concurrency slots live: empty for this process's "
            'memory, or "redis://...", "rediss://...", "unix:///..." shared by several gateways.'
        ),
    ] = ""
    lease_ttl: Annotated[
        float,
        _doc(
            "Seconds a slot or reservation of a gateway that stopped answering outlives it.",
            ge=1,
            le=600,
        ),
    ] = 15.0
    timeout: Annotated[
        float, _doc("Seconds a call waits for Redis before the request gets 503.", gt=0, le=10)
    ] = 0.5
    prefix: Annotated[
        str,
        _doc(
            "Start of every Redis key this gateway writes (one per deployment sharing a Redis).",
            pattern=r"^[A-Za-z0-9:_.-]{1,64}$",
        ),
    ] = "gw:"


class ClusterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    forward: Annotated[
        bool,
        _doc(
            "Send a request for a model another live gateway has loaded to that gateway "
            "instead of loading a second copy (with counters.url and cluster.secret set)."
        ),
    ] = True
    node_url: Annotated[
        str,
        _doc(
            'How the other gateways reach this one ("http://10.0.0.2:8080"); empty: '
            "this gateway takes no forwarded requests and publishes nothing."
        ),
    ] = ""
    secret: Annotated[
        str,
        _doc(
            "Shared secret (32+ characters) that signs forwarded requests "
            "(prefer GATEWAY_CLUSTER_SECRET)."
        ),
    ] = ""
    heartbeat: Annotated[
        float, _doc("Seconds between this gateway's reports to the others.", ge=0.2, le=60)
    ] = 1.0


class ConsoleSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: Annotated[bool, _doc("Serve the browser console at /ui.")] = True
    session_ttl: Annotated[
        float,
        _doc("Seconds a console sign-in lasts; then the key is asked for again.", ge=60, le=86400),
    ] = 3600.0
    htmx_file: Annotated[
        str,
        _doc(
            "htmx.min.js for the console's live parts; empty: taken once from the "
            "django-htmx wheel on PyPI into data_dir/cache (pages work without it)."
        ),
    ] = ""


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    data_dir: Annotated[str, _doc("Where the gateway keeps its models, caches and database.")] = (
        "~/.local/share/mlx-gateway"
    )
    server: ServerSettings = ServerSettings()
    models: ModelsSettings = ModelsSettings()
    engine: EngineSettings = EngineSettings()
    auth: AuthSettings = AuthSettings()
    downloads: DownloadSettings = DownloadSettings()
    accounts: AccountsSettings = AccountsSettings()
    counters: CountersSettings = CountersSettings()
    cluster: ClusterSettings = ClusterSettings()
    console: ConsoleSettings = ConsoleSettings()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def models_path(self) -> Path:
        return Path(self.models.dir).expanduser() if self.models.dir else self.data_path / "models"


SECTIONS: dict[str, type[msgspec.Struct]] = {
    "server": ServerSettings,
    "models": ModelsSettings,
    "engine": EngineSettings,
    "auth": AuthSettings,
    "downloads": DownloadSettings,
    "accounts": AccountsSettings,
    "counters": CountersSettings,
    "cluster": ClusterSettings,
    "console": ConsoleSettings,
}


def field_docs() -> dict[str, str]:
    """Every setting as ``section.field`` (or ``field``) with its description."""
    docs: dict[str, str] = {}
    for prefix, struct in [("", Settings), *((f"{k}.", v) for k, v in SECTIONS.items())]:
        info = msgspec.inspect.type_info(struct)
        assert isinstance(info, msgspec.inspect.StructType)
        for field in info.fields:
            if field.name in SECTIONS and not prefix:
                continue
            if isinstance(field.type, msgspec.inspect.DictType) and not _constraints(field.type):
                continue
            meta = [c for c in _constraints(field.type) if c]
            docs[prefix + field.name] = meta[0] if meta else ""
    return docs


def _constraints(t: msgspec.inspect.Type) -> list[str]:
    extra = getattr(t, "extra_json_schema", None)
    return [extra.get("description", "")] if extra else []


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, field = dotted.rpartition(".")
    target = tree.setdefault(section, {}) if section else tree
    if not isinstance(target, dict):
        raise SettingsError(f"{section}: expected a table")
    target[field] = value


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    known = field_docs()
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        dotted = key if key in known else key.replace("_", ".", 1)
        if dotted not in known:
            raise SettingsError(f"{name}: no such setting (see docs/configuration.md)")
        _set(tree, dotted, value)
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config_path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults < TOML file < environment < ``overrides``.

    ``overrides`` maps dotted names (``server.port``) to values, as flags give them.
    """
    environ = os.environ if environ is None else environ
    path = config_path or environ.get(CONFIG_ENV)
    tree: dict[str, Any] = {}
    if path:
        try:
            tree = tomllib.loads(Path(path).expanduser().read_text())
        except FileNotFoundError as exc:
            raise SettingsError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path}: {exc}") from exc
    tree = _merge(tree, _from_environ(environ))
    flags: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(flags, dotted, value)
    tree = _merge(tree, flags)
    try:
        settings = msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc
    if settings.engine.default_max_tokens > settings.engine.max_tokens_limit:
        raise SettingsError("engine.default_max_tokens: must not exceed engine.max_tokens_limit")
    memory_budget_bytes(settings.engine.memory_budget, physical=1)  # validates the syntax
    _check_auth(settings)
    _check_shared_stores(settings)
    for field in ("disk_budget", "min_free", "max_model_size"):
        parse_size(getattr(settings.downloads, field), f"downloads.{field}")
    _check_cache_groups(settings.engine.prompt_cache_groups)
    for model_id, entry in settings.models.catalogue.items():
        if bool(entry.path) == bool(entry.repo):
            raise SettingsError(f"models.catalogue.{model_id}: give exactly one of path or repo")
    return settings


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _check_cache_groups(groups: Mapping[str, list[str]]) -> None:
    seen: dict[str, str] = {}
    for name, members in groups.items():
        for key_id in members:
            if key_id in seen:
                raise SettingsError(
                    f"engine.prompt_cache_groups.{name}: key {key_id} is already in group "
                    f"{seen[key_id]}; a key shares its prompt cache with one group at most"
                )
            seen[key_id] = name


def queue_per_key(engine: EngineSettings) -> int:
    """The per-key, per-model cap on queued-plus-running requests (0 means derived)."""
    return engine.queue_per_key or max(1, engine.queue_per_model // 4)


def _check_auth(settings: Settings) -> None:
    auth = settings.auth
    if not auth.enabled and settings.server.host not in LOOPBACK:
        raise SettingsError(
            "auth.enabled: authentication may be disabled only when server.host is loopback"
        )
    if auth.jwt_algorithm == "HS256" and len(auth.jwt_secret) < 32:
        raise SettingsError("auth.jwt_secret: HS256 needs a secret of at least 32 characters")
    if auth.jwt_algorithm in ("RS256", "ES256") and not auth.jwt_public_key_file:
        raise SettingsError(f"auth.jwt_public_key_file: {auth.jwt_algorithm} needs a public key")


def _check_shared_stores(settings: Settings) -> None:
    accounts, counters, cluster = settings.accounts, settings.counters, settings.cluster
    if accounts.url and not accounts.url.startswith(("postgresql://", "postgres://")):
        raise SettingsError('accounts.url: expected "postgresql://..." (or empty for SQLite)')
    if counters.url and not counters.url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(
            'counters.url: expected "redis://...", "rediss://..." or "unix:///..." '
            "(or empty for memory)"
        )
    if counters.url and not accounts.url:
        raise SettingsError(
            "counters.url: shared counters need a shared ledger to seed the day's totals "
            "from; set accounts.url too"
        )
    if cluster.node_url and not cluster.node_url.startswith(("http://", "https://")):
        raise SettingsError('cluster.node_url: expected "http://host:port"')
    if (cluster.node_url or cluster.secret) and not counters.url:
        raise SettingsError("cluster: the gateways meet in Redis; set counters.url")
    if cluster.node_url and not cluster.secret:
        raise SettingsError("cluster.secret: a gateway that takes forwarded requests needs it")
    if cluster.secret and len(cluster.secret) < 32:
        raise SettingsError("cluster.secret: use a shared secret of at least 32 characters")


def _describe(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's "... - at `$.server.port`" into "server.port: ..."."""
    text = str(exc)
    message, sep, where = text.rpartition(" - at `$.")
    if not sep:
        return text
    return f"{where.rstrip('`')}: {message}"


__all__ = [
    "Settings",
    "SettingsError",
    "field_docs",
    "load_settings",
    "memory_budget_bytes",
    "parse_size",
    "queue_per_key",
]
