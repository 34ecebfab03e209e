"""The ``gateway`` command: ``serve``, ``models import|list``, ``check-config``."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    import uvicorn

    from engine.bundled import BUNDLED_ID, ensure_bundled_model
    from gateway.app import create_app

    settings = _settings(args)
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(name)s %(message)s"
    )
    if settings.models.default == BUNDLED_ID:
        ensure_bundled_model(settings.models_path, settings.data_path / "cache")
    announce_auth(settings)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=int(settings.engine.stop_timeout) + 1,
    )
    return 0


def announce_auth(settings: Settings) -> None:
    """Create and print the first admin key of an empty store; shout if auth is off."""
    import time

    from gateway.app import open_key_store
    from gateway.keystore import ensure_admin_key

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
    with open_key_store(settings) as keys:
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
    from engine.store import discover

    settings = _settings(args)
    specs = discover(settings.models_path)
    print(f"{'ID':40} {'SIZE':>12}  PATH")
    for spec in specs:
        print(f"{spec.id:40} {spec.size_bytes():>12}  {spec.path}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    docs = field_docs()
    import msgspec

    tree = msgspec.to_builtins(settings)
    for dotted in docs:
        section, _, field = dotted.rpartition(".")
        value = tree[section][field] if section else tree[field]
        print(f"{dotted} = {value!r}")
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
    lst = models_sub.add_parser("list", help="list models on disk")
    lst.add_argument("--models-dir")
    lst.set_defaults(func=cmd_models_list)

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


if __name__ == "__main__":
    sys.exit(main())
