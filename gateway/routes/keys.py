"""Key management and usage over HTTP (``admin`` scope): ``/admin/keys``, ``/admin/usage``.

The secret of a new key is in the create response and nowhere else, ever.  Every
number is bounded before it reaches the store: limits are integers in
``[0, MAX_LIMIT]`` and ``expires_in_days`` is in ``(0, MAX_EXPIRY_DAYS]``, so that
nothing stores infinity or overflows SQLite's integers (400 naming the field).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, patch, post
from msgspec import Meta

from accounts.interfaces import KeyStore, UsageLedger
from accounts.keys import MAX_EXPIRY_DAYS, MAX_LIMIT
from accounts.records import KeyRecord
from gateway.auth import require_admin
from gateway.context import AppContext
from gateway.errors import GatewayError, InvalidRequest
from gateway.responses import decode_body
from policies.principal import SCOPES, Limits

Limit = Annotated[int, Meta(ge=0, le=MAX_LIMIT)] | None


class LimitsIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    requests_per_minute: Limit = None
    tokens_per_minute: Limit = None
    max_concurrent: Limit = None
    tokens_per_day: Limit = None
    loads_per_hour: Limit = None
    download_bytes_per_day: Limit = None


class KeyCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    scopes: list[str] = msgspec.field(default_factory=lambda: ["infer"])
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    limits: LimitsIn = LimitsIn()
    expires_in_days: Annotated[float, Meta(gt=0, le=MAX_EXPIRY_DAYS)] | None = None


class KeyUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    scopes: list[str] | None = None
    models: list[str] | None = None
    limits: dict[str, Limit] | None = None


class KeyView(msgspec.Struct, frozen=True):
    id: str
    name: str
    scopes: list[str]
    models: list[str]
    limits: dict[str, int | None]
    created_at: float
    expires_at: float | None
    revoked_at: float | None


class KeyNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "key_not_found"


def view(record: KeyRecord) -> KeyView:
    return KeyView(
        record.id,
        record.name,
        sorted(record.scopes),
        list(record.models),
        msgspec.structs.asdict(LimitsIn(**vars(record.limits))),
        record.created_at,
        record.expires_at,
        record.revoked_at,
    )


def store_of(request: Request) -> KeyStore:
    ctx: AppContext = request.app.state.ctx
    assert ctx.keys is not None
    return ctx.keys


def ledger_of(request: Request) -> UsageLedger:
    ctx: AppContext = request.app.state.ctx
    assert ctx.ledger is not None
    return ctx.ledger


def check_scopes(scopes: list[str]) -> None:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise InvalidRequest(f"Unknown scopes {unknown}; known: {list(SCOPES)}.", param="scopes")


async def write(call: Any) -> Any:
    try:
        return await asyncio.to_thread(call)
    except KeyError:
        raise KeyNotFound("No such key.") from None
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


async def create(store: KeyStore, body: KeyCreate) -> tuple[KeyRecord, str]:
    """A new key from a validated request (the API's and the console's)."""
    check_scopes(body.scopes)
    now = time.time()
    expires = now + body.expires_in_days * 86400 if body.expires_in_days else None
    result: tuple[KeyRecord, str] = await write(
        lambda: store.create_key(
            body.name,
            scopes=body.scopes,
            models=body.models,
            limits=Limits(**msgspec.structs.asdict(body.limits)),
            expires_at=expires,
            now=now,
        )
    )
    return result


async def update(store: KeyStore, key_id: str, body: KeyUpdate) -> KeyRecord:
    if body.scopes is not None:
        check_scopes(body.scopes)
    record: KeyRecord = await write(
        lambda: store.update(
            key_id, name=body.name, scopes=body.scopes, models=body.models, limits=body.limits
        )
    )
    return record


async def revoke(ctx: AppContext, key_id: str) -> KeyRecord:
    """Revoke a key and end its console sessions (the API refuses it from now on)."""
    assert ctx.keys is not None
    keys = ctx.keys
    record: KeyRecord = await write(lambda: keys.revoke(key_id, time.time()))
    ctx.sessions.end_key(key_id)
    return record


@post("/admin/keys", status_code=201, guards=[require_admin])
async def create_key(request: Request) -> Response[dict[str, Any]]:
    body = decode_body(await request.body(), KeyCreate)
    record, key = await create(store_of(request), body)
    return Response({"key": key, **msgspec.to_builtins(view(record))}, status_code=201)


@get("/admin/keys", guards=[require_admin])
async def list_keys(request: Request) -> dict[str, list[KeyView]]:
    records = await asyncio.to_thread(store_of(request).list_keys)
    return {"data": [view(r) for r in records]}


@get("/admin/keys/{key_id:str}", guards=[require_admin])
async def show_key(request: Request, key_id: str) -> dict[str, Any]:
    store = store_of(request)
    record = await asyncio.to_thread(store.get, key_id)
    if record is None:
        raise KeyNotFound("No such key.")
    ledger = ledger_of(request)
    usage = await asyncio.to_thread(lambda: ledger.usage_summary(key_id=key_id))
    return {**msgspec.to_builtins(view(record)), "usage": usage}


@patch("/admin/keys/{key_id:str}", guards=[require_admin])
async def update_key(request: Request, key_id: str) -> KeyView:
    body = decode_body(await request.body(), KeyUpdate)
    return view(await update(store_of(request), key_id, body))


@post("/admin/keys/{key_id:str}/revoke", status_code=200, guards=[require_admin])
async def revoke_key(request: Request, key_id: str) -> KeyView:
    return view(await revoke(request.app.state.ctx, key_id))


@get("/admin/usage", guards=[require_admin])
async def usage(
    request: Request, key: str | None = None, since_days: float | None = None
) -> dict[str, Any]:
    if since_days is not None and not (math.isfinite(since_days) and since_days > 0):
        raise InvalidRequest("since_days: must be a positive number of days.", param="since_days")
    since = time.time() - min(since_days, 100 * 365) * 86400 if since_days else None
    ledger = ledger_of(request)
    rows = await asyncio.to_thread(lambda: ledger.usage_summary(key_id=key, since=since))
    return {"data": rows}
