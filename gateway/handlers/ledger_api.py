"""``GET /admin/ledger``: spend from the ledger, by key, model, route, end user and day, as JSON or CSV.

``?tenant=&from=&to=&group_by=key,day&format=json|csv``. The operator may ask for any tenant (or none:
every tenant); an ``admin`` key sees its own tenant only (gateway/handlers/admin_access.py).
``from``/``to`` are ISO 8601 dates or times (UTC unless they say otherwise) or unix seconds; ``from`` is
included, ``to`` is not, and a date alone as ``to`` includes that whole day. Default range: the tenant's
current budget period (``total``: everything), or the current UTC month for a tenant without a budget
or for every tenant; ``to`` defaults to now.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, date, datetime, timedelta

import orjson
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import BadRequest, GatewayError, NotFound, StoreUnavailable, render_openai
from gateway.handlers.admin_access import audited, caller, target
from gateway.ledger import query
from gateway.ledger.report import GROUPS
from gateway.pipeline.admit import period_start
from gateway.responses import json_response
from gateway.state import GatewayState

log = logging.getLogger("gateway.ledger")
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@audited("ledger.read")
async def ledger_report(request: Request) -> Response:
    try:
        state, who = caller(request)
        params = request.query_params
        asked = params.get("tenant")
        if asked is not None and (not asked or len(asked) > 64 or not set(asked) <= _NAME_OK):
            raise BadRequest("'tenant' must be a tenant name.", param="tenant")
        tenant = who.tenant(asked)
        target(request, tenant=tenant)
        group_by = _group_by(params.get("group_by", ""))
        fmt = params.get("format", "json")
        if fmt not in ("json", "csv"):
            raise BadRequest("'format' must be 'json' or 'csv'.", param="format")
        ledger = state.ledger
        if ledger is None:
            raise NotFound(
                "The spend ledger is off: set GATEWAY_LEDGER_URL (see README, Spend ledger).",
                code="ledger_off",
            )
        now = time.time()
        start = _when(params.get("from"), "from", end=False)
        end = _when(params.get("to"), "to", end=True)
        if start is None:
            start = _default_start(state, tenant, now)
        if end is None:
            end = now
        if end < start:
            raise BadRequest("'to' is before 'from'.", param="to")
        try:
            report = await asyncio.to_thread(query, ledger.engine, tenant, start, end, group_by)
        except SQLAlchemyError as exc:
            log.warning("ledger query failed: %s", exc)
            raise StoreUnavailable("The ledger database is unreachable.", code="ledger_unavailable") from exc
    except GatewayError as err:
        return json_response(render_openai(err), err.status, err.headers)
    if fmt == "csv":
        stamp = datetime.fromtimestamp(start, UTC).strftime("%Y%m%d")
        name = f"ledger-{tenant or 'all'}-{stamp}.csv"
        return Response(
            report.csv(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )
    body = {
        "tenant": tenant,
        "from": _iso(start),
        "to": _iso(end),
        "group_by": list(group_by),
        "rows": report.rows,
        "total_cost_usd": report.total_usd,
    }
    return json_response(orjson.dumps(body), 200, {})


def _group_by(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in GROUPS]
    if unknown or len(set(names)) != len(names):
        raise BadRequest(
            f"'group_by' is a comma-separated list of distinct names from: {', '.join(GROUPS)}.",
            param="group_by",
        )
    return names


_UNIX_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _when(text: str | None, param: str, *, end: bool) -> float | None:
    if text is None or text == "":
        return None
    if _UNIX_SECONDS.fullmatch(text):
        return float(text)
    try:
        if len(text) == 10:  # a date: from its midnight; as ``to``, through its end
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return (moment + timedelta(days=1) if end else moment).timestamp()
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"'{param}' must be an ISO 8601 date or time (2026-12-01, 2026-12-01T09:00:00Z) or unix seconds.",
            param=param,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _default_start(state: GatewayState, tenant: str | None, now: float) -> float:
    """The tenant's current budget period; the current UTC month without one."""
    config = state.runtime.budgets.tenants.get(tenant) if tenant is not None else None
    if config is not None and config.budget is not None:
        return float(period_start(config.budget, now))
    today = datetime.fromtimestamp(now, UTC)
    return datetime(today.year, today.month, 1, tzinfo=UTC).timestamp()


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
