"""The ``gateway`` command: ``serve``, ``models import|list``, ``check-config``."""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from accounts.errors import StoreUnavailable
from gateway.cli_keys import add_key_commands
from gateway.settings import Settings, SettingsError, field_docs, load_settings

log = logging.getLogger("gateway")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "server.host": getattr(args, "host", None),
        "server.port": getattr(args, "port", None),
        "server.log_level": getattr(args, "log_level", None),
        "data_dir": getattr(args, "data_dir", None),
        "models.dir": getattr(args, "models_dir", None),
    }
    return load_settings(args.config, overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.bundled import BUNDLED_ID, ensure_bundled_model
    from gateway.app import create_app
    from gateway.observe import configure_event_log
    from gateway.server import serve

    settings = _settings(args)
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(name)s %(message)s"
    )
    if settings.models.default == BUNDLED_ID:
        ensure_bundled_model(settings.models_path, settings.data_path / "cache")
    announce_auth(settings)
    configure_event_log()
    return serve(create_app(settings), settings)


def announce_auth(settings: Settings) -> None:
    """Create and print the first admin key of an empty store; shout if auth is off."""
    import time

    from accounts.sqlite_store import ensure_admin_key
    from gateway.stores import open_accounts

    if not settings.auth.enabled:
        banner = "!" * 78
        print(
            f"{banner}\n!! AUTHENTICATION IS DISABLED: anyone who can reach "
            f"{settings.server.host}:{settings.server.port}\n!! can use, load and "
            f"unload every model. Allowed only on loopback.\n{banner}",
            file=sys.stderr,
            flush=True,
        )
        return
    with open_accounts(settings) as keys:
        key = ensure_admin_key(keys, time.time())
    if key is not None:
        print(
            "Created the first admin key (scopes infer,load,download,admin). It is shown only\n"
            f"this once; store it now:\n\n    {key}\n",
            flush=True,
        )


def cmd_models_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    name = args.name or Path(args.file).stem.lower()
    target = settings.models_path / name
    # The conversion imports MLX: run it in its own process, like every MLX task.
    result = subprocess.run(
        [sys.executable, "-m", "engine.gguf_import", args.file, str(target), "--name", name]
    )
    if result.returncode == 0:
        print(f"imported {args.file} as {name} in {target}")
    return result.returncode


def cmd_models_list(args: argparse.Namespace) -> int:
    from engine.memory import format_bytes
    from gateway.catalogue import build_store

    settings = _settings(args)
    store = build_store(settings)
    print(f"{'ID':48} {'STATE':10} {'SIZE':>10}  PATH")
    for spec in store.all():
        state = "on_disk" if spec.on_disk else ("downloadable" if spec.repo else "missing")
        size = format_bytes(spec.size_bytes()) if spec.on_disk else "-"
        print(f"{spec.id:48} {state:10} {size:>10}  {spec.path}")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    """Download a hub model with a progress bar (the operator's own pull: no key quota,
    but the disk budget and max_model_size apply)."""
    import asyncio

    from engine.downloads import DownloadError, JobState, fetch_plan
    from engine.memory import format_bytes
    from gateway.hub import make_downloader
    from gateway.settings import parse_size

    settings = _settings(args)
    try:
        plan = fetch_plan(args.repo, args.revision)
    except DownloadError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    limit = parse_size(settings.downloads.max_model_size, "downloads.max_model_size")
    if plan.total_bytes > limit:
        print(
            f"gateway: {args.repo} is {format_bytes(plan.total_bytes)}, over "
            f"downloads.max_model_size ({format_bytes(limit)})",
            file=sys.stderr,
        )
        return 1

    async def run() -> int:
        downloader = make_downloader(settings)
        if plan.total_bytes > downloader.free_bytes():
            print(
                f"gateway: {args.repo} needs {format_bytes(plan.total_bytes)}; the disk "
                f"budget leaves {format_bytes(downloader.free_bytes())}",
                file=sys.stderr,
            )
            return 1
        job, _ = downloader.start(plan, "cli")
        while not job.done.is_set():
            done = job.bytes_done * 30 // max(plan.total_bytes, 1)
            print(
                f"\r[{'#' * done:30}] {format_bytes(job.bytes_done)} / "
                f"{format_bytes(plan.total_bytes)}",
                end="",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.sleep(0.2)
        print(file=sys.stderr)
        if job.state is not JobState.DONE:
            print(f"gateway: the download failed: {job.error}", file=sys.stderr)
            return 1
        print(
            f"pulled {args.repo}@{plan.commit[:12]} ({format_bytes(plan.total_bytes)}) "
            f"into {downloader.cache_dir}"
        )
        return 0

    return asyncio.run(run())


def cmd_models_rm(args: argparse.Namespace) -> int:
    """Delete a model's files.  A running server must unload it first (or use
    ``DELETE /admin/models/{id}``, which drains it)."""
    import shutil

    from gateway.catalogue import build_store

    settings = _settings(args)
    spec = build_store(settings).resolve(args.id)
    if spec is None or not spec.on_disk:
        print(f"gateway: no model {args.id} on disk", file=sys.stderr)
        return 1
    target = spec.path
    if spec.repo:  # a hub snapshot: remove the whole cached repo
        target = spec.path.parent.parent
    shutil.rmtree(target)
    print(f"removed {spec.id} ({target})")
    return 0


# Settings whose value is a credential: check-config shows whether they are set, never
# what they are.  A field named like a secret is redacted too, should one be added.
SECRET_SETTINGS = frozenset({"auth.jwt_secret", "server.metrics_token"})
SECRET_NAME = re.compile(r"(secret|password|passwd|token|api_key|private_key|credentials?)$")
URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@]*):[^@/]*@", re.I)
REDACTED = "<redacted>"


def redact(dotted: str, value: Any) -> Any:
    """``value`` fit to print: secrets replaced, passwords cut out of URLs."""
    field = dotted.rpartition(".")[2]
    if dotted in SECRET_SETTINGS or SECRET_NAME.search(field):
        return REDACTED if value else value
    if isinstance(value, str):
        return URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{REDACTED}@", value)
    return value


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    docs = field_docs()
    import msgspec

    tree = msgspec.to_builtins(settings)
    for dotted in docs:
        section, _, field = dotted.rpartition(".")
        value = tree[section][field] if section else tree[field]
        print(f"{dotted} = {redact(dotted, value)!r}")
    print("configuration is valid")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gateway", description=__doc__)
    root.add_argument("--config", help="path of gateway.toml (or GATEWAY_CONFIG)")
    sub = root.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir")
    serve.add_argument("--models-dir")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="manage the model store")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    imp = models_sub.add_parser("import", help="convert a GGUF file into an MLX model")
    imp.add_argument("file")
    imp.add_argument("--name", help="catalogue id (default: the file name)")
    imp.add_argument("--models-dir")
    imp.set_defaults(func=cmd_models_import)
    lst = models_sub.add_parser("list", help="list the catalogue with states and sizes")
    lst.add_argument("--models-dir")
    lst.add_argument("--data-dir")
    lst.set_defaults(func=cmd_models_list)
    pull = models_sub.add_parser("pull", help="download a hub model (progress on stderr)")
    pull.add_argument("repo")
    pull.add_argument("--revision", default="main")
    pull.add_argument("--data-dir")
    pull.set_defaults(func=cmd_models_pull)
    rm = models_sub.add_parser("rm", help="delete a model's files (server stopped)")
    rm.add_argument("id")
    rm.add_argument("--models-dir")
    rm.add_argument("--data-dir")
    rm.set_defaults(func=cmd_models_rm)

    add_key_commands(sub)

    check = sub.add_parser("check-config", help="validate the configuration and print it")
    check.set_defaults(func=cmd_check_config)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"gateway: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:  # accounts.url or counters.url does not answer
        print(f"gateway: cannot reach the store of {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
