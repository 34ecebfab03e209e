"""The admin pages (``admin`` scope): models, downloads, keys, usage and recent
refusals.  Their forms call the admin API's own functions (``gateway.routes.admin``,
``gateway.routes.keys``), so the checks are the same ones."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from litestar import Request, get, post
from litestar.response import Redirect, Template

from accounts.keys import MAX_LIMIT
from gateway.console.own import CHART_DAYS, usage_chart
from gateway.console.pages import Signed, checked_form, context, field, render, signed_in
from gateway.console_charts import Series, bar_chart
from gateway.errors import InvalidRequest, RouteNotFound
from gateway.routes import keys as key_routes
from gateway.routes.admin import job_of, job_view, model_action, pull, view
from policies.principal import SCOPES
from policies.window import DAY

LIMIT_FIELDS = (
    ("requests_per_minute", "Requests per minute"),
    ("tokens_per_minute", "Tokens per minute"),
    ("max_concurrent", "Requests at once"),
    ("tokens_per_day", "Tokens per day"),
    ("loads_per_hour", "Model loads per hour"),
    ("download_bytes_per_day", "Download bytes per day"),
)


async def admin(request: Request) -> Signed:
    return await signed_in(request, admin=True)


def models_values(request: Request) -> dict[str, Any]:
    registry = context(request).registry
    return {
        "models": [view(s) for s in registry.statuses()],
        "budget": registry.memory_budget,
        "used": registry.memory_used,
    }


@get("/ui/models")
async def models_page(request: Request) -> Template:
    signed = await admin(request)
    return render(request, "models.html", signed, **models_values(request))


@get("/ui/live/models")
async def live_models(request: Request) -> Template:
    signed = await admin(request)
    return render(request, "models_live.html", signed, **models_values(request))


@post("/ui/models/action", status_code=303)
async def model_post(request: Request) -> Redirect:
    signed = await admin(request)
    form = await checked_form(request, signed)
    action = field(form, "action")
    if action not in ("load", "unload"):
        raise InvalidRequest("The action is load or unload.", param="action")
    model_action(context(request), field(form, "model"), action)
    return Redirect("/ui/models", status_code=303)


def jobs_values(request: Request) -> dict[str, Any]:
    downloader = context(request).downloader
    jobs = list(downloader.jobs.values()) if downloader else []
    return {"jobs": [job_view(j) for j in reversed(jobs)][:50], "enabled": downloader is not None}


@get("/ui/downloads")
async def downloads_page(request: Request) -> Template:
    signed = await admin(request)
    return render(request, "downloads.html", signed, **jobs_values(request))


@get("/ui/live/downloads")
async def live_downloads(request: Request) -> Template:
    signed = await admin(request)
    return render(request, "downloads_live.html", signed, **jobs_values(request))


@post("/ui/downloads", status_code=303)
async def download_post(request: Request) -> Redirect:
    signed = await admin(request)
    form = await checked_form(request, signed)
    ctx = context(request)
    await pull(ctx, signed.principal, ctx.resolve_model(field(form, "model")))
    return Redirect("/ui/downloads", status_code=303)


@post("/ui/downloads/{job_id:str}/cancel", status_code=303)
async def download_cancel(request: Request, job_id: str) -> Redirect:
    signed = await admin(request)
    await checked_form(request, signed)
    ctx = context(request)
    job = job_of(ctx, job_id)
    assert ctx.downloader is not None
    ctx.downloader.cancel(job.id)
    return Redirect("/ui/downloads", status_code=303)


def limits_of(form: dict[str, list[str]]) -> dict[str, int | None]:
    """The limit fields of a key form: empty is unlimited, else a whole number."""
    limits: dict[str, int | None] = {}
    for name, label in LIMIT_FIELDS:
        text = field(form, name)
        if not text:
            limits[name] = None
        elif text.isdigit() and int(text) <= MAX_LIMIT:
            limits[name] = int(text)
        else:
            raise InvalidRequest(f"{label}: a whole number from 0 to {MAX_LIMIT}.", param=name)
    return limits


def expiry_of(days: str) -> float | None:
    """The expiry field: empty is never; anything but a number is refused (400)."""
    if not days:
        return None
    try:
        return float(days)
    except ValueError:
        raise InvalidRequest("Expires after: a number of days.", param="expires_in_days") from None


def allowlist_of(form: dict[str, list[str]]) -> list[str]:
    return [g for g in field(form, "models", "*").replace(",", " ").split() if g]


async def keys_values(request: Request) -> dict[str, Any]:
    records = await asyncio.to_thread(key_routes.store_of(request).list_keys)
    return {"keys": [key_routes.view(r) for r in records], "scopes": SCOPES, "fields": LIMIT_FIELDS}


@get("/ui/keys")
async def keys_page(request: Request) -> Template:
    signed = await admin(request)
    return render(request, "keys.html", signed, **await keys_values(request))


@post("/ui/keys")
async def key_create(request: Request) -> Template:
    signed = await admin(request)
    form = await checked_form(request, signed)
    days = field(form, "expires_in_days")
    body = {
        "name": field(form, "name"),
        "scopes": form.get("scopes", []),
        "models": allowlist_of(form),
        "limits": {k: v for k, v in limits_of(form).items() if v is not None},
        "expires_in_days": expiry_of(days),
    }
    try:
        create = msgspec.convert(body, key_routes.KeyCreate)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"The key form is invalid: {exc}") from None
    record, secret = await key_routes.create(key_routes.store_of(request), create)
    return render(
        request,
        "key_created.html",
        signed,
        status=201,
        key=key_routes.view(record),
        secret=secret,
    )


async def key_of(request: Request, key_id: str) -> Any:
    record = await asyncio.to_thread(key_routes.store_of(request).get, key_id)
    if record is None:
        raise RouteNotFound("No such key.", code="key_not_found")
    return record


@get("/ui/keys/{key_id:str}")
async def key_page(request: Request, key_id: str) -> Template:
    signed = await admin(request)
    record = await key_of(request, key_id)
    ctx = context(request)
    now = time.time()
    assert ctx.ledger is not None
    ledger = ctx.ledger
    rows = await asyncio.to_thread(
        lambda: ledger.usage_by_day(since=now - CHART_DAYS * DAY, key_id=record.id)
    )
    chart = usage_chart(
        rows, now, by="model", value="tokens", title="Tokens per day", unit="tokens"
    )
    return render(
        request,
        "key.html",
        signed,
        key=key_routes.view(record),
        scopes=SCOPES,
        fields=LIMIT_FIELDS,
        chart=chart,
    )


@post("/ui/keys/{key_id:str}", status_code=303)
async def key_update(request: Request, key_id: str) -> Redirect:
    signed = await admin(request)
    form = await checked_form(request, signed)
    update = key_routes.KeyUpdate(
        name=field(form, "name") or None,
        scopes=form.get("scopes", []),
        models=allowlist_of(form),
        limits=limits_of(form),
    )
    record = await key_routes.update(key_routes.store_of(request), key_id, update)
    return Redirect(f"/ui/keys/{record.id}", status_code=303)


@post("/ui/keys/{key_id:str}/revoke", status_code=303)
async def key_revoke(request: Request, key_id: str) -> Redirect:
    signed = await admin(request)
    await checked_form(request, signed)
    await key_routes.revoke(context(request), key_id)
    return Redirect("/ui/keys", status_code=303)


@get("/ui/usage")
async def usage_page(request: Request) -> Template:
    signed = await admin(request)
    ctx = context(request)
    now = time.time()
    assert ctx.ledger is not None
    ledger = ctx.ledger
    rows = await asyncio.to_thread(lambda: ledger.usage_by_day(since=now - CHART_DAYS * DAY))
    hours, by_code = ctx.events.hourly(now)
    labels = [time.strftime("%H:00", time.gmtime(h * 3600)) for h in hours]
    refusals = bar_chart(
        "Refusals and errors per hour (this gateway, UTC)",
        labels,
        [Series(code, tuple(counts)) for code, counts in by_code.items()],
        unit="responses",
    )
    return render(
        request,
        "usage.html",
        signed,
        charts=[
            usage_chart(
                rows, now, by="key", value="tokens", title="Tokens per day by key", unit="tokens"
            ),
            usage_chart(
                rows,
                now,
                by="model",
                value="tokens",
                title="Tokens per day by model",
                unit="tokens",
            ),
            usage_chart(
                rows,
                now,
                by="key",
                value="requests",
                title="Requests per day by key",
                unit="requests",
            ),
            refusals,
        ],
    )


@get("/ui/events")
async def events_page(request: Request) -> Template:
    signed = await admin(request)
    return render(request, "events.html", signed, events=context(request).events.recent(200))
