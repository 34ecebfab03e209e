"""``gateway keys create|list|show|update|revoke`` and ``gateway usage``.

Each command opens ``<data_dir>/gateway.db`` itself; SQLite's WAL mode lets it
do so while the server runs.  Secrets are printed once, by ``keys create``,
and never again: the database holds only their hashes.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from accounts.interfaces import Accounts
from accounts.keys import MAX_EXPIRY_DAYS, MAX_LIMIT, check_expiry_days
from accounts.limits import LIMIT_COLUMNS, LIMIT_FLAGS, LIMIT_SHORT
from accounts.records import KeyRecord
from accounts.sqlite_writer import SchemaError
from gateway.quotas import parse_quota
from gateway.settings import load_settings
from gateway.stores import open_accounts
from policies.principal import SCOPES, Limits

DAY = 86400.0
UNLIMITED = ("none", "unlimited")


# -- argument types: errors become "argument --x: message" and exit status 2 -------------
def _scopes(text: str) -> list[str]:
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise argparse.ArgumentTypeError(
            f"unknown scope {', '.join(unknown) or repr(text)}; choose from {','.join(SCOPES)}"
        )
    return scopes


def _globs(text: str) -> list[str]:
    globs = [g.strip() for g in text.split(",")]
    if not all(globs):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of model globs")
    return globs


def _limit(text: str) -> int | None:
    if text.strip().lower() in UNLIMITED:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a count (a whole number from 0 to {MAX_LIMIT}, or 'none')"
        )
    return value


def _quota(text: str) -> int | None:
    if text.strip().lower() in UNLIMITED:
        return None
    try:
        return parse_quota(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _days(text: str) -> float | None:
    if text.strip().lower() in UNLIMITED:
        return None
    try:
        return check_expiry_days(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of days above 0 and at most {MAX_EXPIRY_DAYS}, or 'none'"
        ) from None


def _key_flags(parser: argparse.ArgumentParser, *, update: bool) -> None:
    verb = "replace" if update else "set"
    parser.add_argument("--models", type=_globs, help=f"{verb} the model globs (comma list)")
    parser.add_argument("--scopes", type=_scopes, help=f"{verb} the scopes ({','.join(SCOPES)})")
    for flag, field in LIMIT_FLAGS.items():
        parser.add_argument(
            flag, type=_limit, default=argparse.SUPPRESS, metavar="N", help=f"{field} or 'none'"
        )
    parser.add_argument(
        "--download-quota",
        type=_quota,
        default=argparse.SUPPRESS,
        metavar="SIZE/day",
        help="download bytes per day, e.g. 20GB/day, or 'none'",
    )
    parser.add_argument(
        "--expires-in-days",
        type=_days,
        default=argparse.SUPPRESS,
        metavar="N",
        help="expire N days from now ('none': never)",
    )


def _limits(args: argparse.Namespace) -> dict[str, int | None]:
    given = {
        field: getattr(args, flag[2:].replace("-", "_"))
        for flag, field in LIMIT_FLAGS.items()
        if hasattr(args, flag[2:].replace("-", "_"))
    }
    if hasattr(args, "download_quota"):
        given["download_bytes_per_day"] = args.download_quota
    return given


def _expires_at(args: argparse.Namespace, now: float) -> float | None:
    days = args.expires_in_days
    return None if days is None else now + days * DAY


# -- output ------------------------------------------------------------------------------
def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%MZ")
    except (OverflowError, ValueError, OSError):  # a date no calendar holds (an old inf)
        return "never" if ts > 0 else "-"


def _size(n: int) -> str:
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def _limits_text(limits: Limits) -> str:
    parts = []
    for field in LIMIT_COLUMNS:
        value = getattr(limits, field)
        if value is None:
            continue
        if field == "download_bytes_per_day":
            parts.append(f"download={_size(value)}/day")
        else:
            parts.append(f"{LIMIT_SHORT[field]}={value}")
    return " ".join(parts) or "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _print_key(record: KeyRecord) -> None:
    print(f"id:       {record.id}")
    print(f"name:     {record.name}")
    print(f"scopes:   {','.join(s for s in SCOPES if s in record.scopes)}")
    print(f"models:   {','.join(record.models)}")
    print(f"limits:   {_limits_text(record.limits)}")
    print(f"created:  {_when(record.created_at)}")
    print(f"expires:  {_when(record.expires_at)}")
    print(f"revoked:  {_when(record.revoked_at)}")


def _print_usage(summary: list[dict[str, Any]]) -> None:
    if not summary:
        print("no usage recorded")
        return
    headers = ["KEY", "NAME", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "ERRORS"]
    fields = ["model", "requests", "prompt_tokens", "completion_tokens", "errors"]
    _table(
        headers, [[row["key_id"], row["name"] or "-", *(row[f] for f in fields)] for row in summary]
    )


# -- commands ----------------------------------------------------------------------------
def cmd_create(store: Accounts, args: argparse.Namespace, now: float) -> int:
    record, full_key = store.create_key(
        args.name,
        scopes=args.scopes or ["infer"],
        models=args.models or ["*"],
        limits=Limits(**_limits(args)),
        expires_at=_expires_at(args, now) if hasattr(args, "expires_in_days") else None,
        now=now,
    )
    _print_key(record)
    print()
    print(full_key)
    print("Store this key now; it cannot be shown again.")
    return 0


def cmd_list(store: Accounts, args: argparse.Namespace, now: float) -> int:
    headers = ["ID", "NAME", "SCOPES", "MODELS", "LIMITS", "CREATED", "EXPIRES", "REVOKED"]
    rows = [
        [
            r.id,
            r.name,
            ",".join(s for s in SCOPES if s in r.scopes),
            ",".join(r.models),
            _limits_text(r.limits),
            _when(r.created_at),
            _when(r.expires_at),
            _when(r.revoked_at),
        ]
        for r in store.list_keys()
    ]
    _table(headers, rows)
    return 0


def cmd_show(store: Accounts, args: argparse.Namespace, now: float) -> int:
    record = store.get(args.id)
    if record is None:
        raise KeyError(args.id)
    _print_key(record)
    print(f"active:   {'yes' if record.active(now) else 'no'}")
    print(f"tokens in the last day:    {store.tokens_since(record.id, now - DAY)}")
    print(f"downloads in the last day: {_size(store.download_bytes_since(record.id, now - DAY))}")
    print(f"loads in the last hour:    {len(store.loads_since(record.id, now - 3600))}")
    print()
    _print_usage(store.usage_summary(key_id=record.id))
    return 0


def cmd_update(store: Accounts, args: argparse.Namespace, now: float) -> int:
    changes: dict[str, Any] = {"limits": _limits(args)}
    if args.name is not None:
        changes["name"] = args.name
    if args.scopes is not None:
        changes["scopes"] = args.scopes
    if args.models is not None:
        changes["models"] = args.models
    if hasattr(args, "expires_in_days"):
        changes["expires_at"] = _expires_at(args, now)
    if len(changes) == 1 and not changes["limits"]:
        print("gateway: keys update: nothing to change; give at least one flag", file=sys.stderr)
        return 2
    _print_key(store.update(args.id, **changes))
    return 0


def cmd_revoke(store: Accounts, args: argparse.Namespace, now: float) -> int:
    record = store.revoke(args.id, now)
    print(f"revoked key {record.id} ({record.name}) at {_when(record.revoked_at)}")
    return 0


def cmd_usage(store: Accounts, args: argparse.Namespace, now: float) -> int:
    since = None if args.since_days is None else now - args.since_days * DAY
    _print_usage(store.usage_summary(key_id=args.key, since=since))
    return 0


def _runner(
    command: Callable[[Accounts, argparse.Namespace, float], int],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            settings = load_settings(
                getattr(args, "config", None), overrides={"data_dir": args.data_dir}
            )
            with open_accounts(settings) as store:
                return command(store, args, time.time())
        except KeyError as exc:
            print(f"gateway: no key with id {exc.args[0]}", file=sys.stderr)
            return 1
        except ValueError as exc:  # SettingsError included
            print(f"gateway: {exc}", file=sys.stderr)
            return 2
        except (sqlite3.Error, SchemaError) as exc:
            print(f"gateway: database error: {exc}", file=sys.stderr)
            return 1

    return run


def add_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys`` and ``usage`` to a ``gateway`` subparser set (``args.func(args)`` runs one)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="the gateway's data directory (holds gateway.db)")

    keys = sub.add_parser("keys", help="manage gateway keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", parents=[common], help="create a key, shown once")
    create.add_argument("name")
    _key_flags(create, update=False)
    create.set_defaults(func=_runner(cmd_create))
    lst = keys_sub.add_parser("list", parents=[common], help="list keys (never their secrets)")
    lst.set_defaults(func=_runner(cmd_list))
    show = keys_sub.add_parser("show", parents=[common], help="one key and its usage")
    show.add_argument("id")
    show.set_defaults(func=_runner(cmd_show))
    update = keys_sub.add_parser("update", parents=[common], help="change a key's settings")
    update.add_argument("id")
    update.add_argument("--name")
    _key_flags(update, update=True)
    update.set_defaults(func=_runner(cmd_update))
    revoke = keys_sub.add_parser("revoke", parents=[common], help="revoke a key at once")
    revoke.add_argument("id")
    revoke.set_defaults(func=_runner(cmd_revoke))

    usage = sub.add_parser("usage", parents=[common], help="tokens and requests per key and model")
    usage.add_argument("--key", help="only this key id")
    usage.add_argument("--since-days", type=_days, help="only the last N days")
    usage.set_defaults(func=_runner(cmd_usage))


def main(argv: list[str] | None = None) -> int:
    root = argparse.ArgumentParser(prog="gateway", description=__doc__)
    root.add_argument("--config", help="path of gateway.toml (or GATEWAY_CONFIG)")
    add_key_commands(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
