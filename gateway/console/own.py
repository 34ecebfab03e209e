"""The page every key holder sees: their key, its limits and what is left of them,
the models their allowlist admits and their state, their own usage and refusals.
Nothing about any other key is read for it."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

from litestar import Request, get
from litestar.response import Template

from gateway.console.pages import context, render, signed_in
from gateway.console_charts import Series, bar_chart
from gateway.context import AppContext
from gateway.routes.models import card
from policies.allowlist import model_allowed
from policies.headroom import headroom
from policies.window import DAY

CHART_DAYS = 14


def days(now: float, count: int = CHART_DAYS) -> list[str]:
    return [
        time.strftime("%Y-%m-%d", time.gmtime(now - (count - 1 - i) * DAY)) for i in range(count)
    ]


def usage_chart(
    rows: list[dict[str, Any]], now: float, *, by: str, value: str, title: str, unit: str
) -> str:
    """A stacked bar per day of ``value`` (tokens or requests), one segment per ``by``."""
    labels = days(now)
    totals: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        name = str(row.get(by) if by != "key" else (row.get("name") or row["key_id"]))
        amount = (
            row["prompt_tokens"] + row["completion_tokens"] if value == "tokens" else row[value]
        )
        totals[name][row["day"]] = totals[name].get(row["day"], 0) + amount
    series = [
        Series(name, tuple(per_day.get(day, 0) for day in labels))
        for name, per_day in sorted(totals.items())
    ]
    return bar_chart(title, labels, series, unit=unit)


async def own_usage(ctx: AppContext, key_id: str, now: float) -> list[dict[str, Any]]:
    assert ctx.ledger is not None
    ledger = ctx.ledger
    since = now - CHART_DAYS * DAY
    return await asyncio.to_thread(lambda: ledger.usage_by_day(since=since, key_id=key_id))


async def quota_rows(request: Request) -> dict[str, Any]:
    ctx = context(request)
    signed = await signed_in(request)
    principal = signed.principal
    now = time.time()
    usage = await asyncio.to_thread(ctx.counters.snapshot, principal.key_id, now)
    return {"signed": signed, "limits": headroom(principal.limits, usage, now), "now": now}


@get("/ui")
async def overview(request: Request) -> Template:
    ctx = context(request)
    found = await quota_rows(request)
    signed = found["signed"]
    principal = signed.principal
    now = found["now"]
    rows = await own_usage(ctx, principal.key_id, now)
    models = [card(ctx, spec) for spec in ctx.store.all() if model_allowed(principal, spec.id)]
    return render(
        request,
        "overview.html",
        signed,
        limits=found["limits"],
        models=models,
        tokens_chart=usage_chart(
            rows, now, by="model", value="tokens", title="Your tokens per day", unit="tokens"
        ),
        requests_chart=usage_chart(
            rows, now, by="model", value="requests", title="Your requests per day", unit="requests"
        ),
        refusals=ctx.events.recent(20, key_id=principal.key_id),
    )


@get("/ui/live/limits")
async def live_limits(request: Request) -> Template:
    found = await quota_rows(request)
    return render(request, "limits.html", found["signed"], limits=found["limits"])
