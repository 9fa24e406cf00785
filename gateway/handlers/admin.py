"""``/admin/*``: run-time keys, spend, reload and explain, behind ``GATEWAY_ADMIN_KEY``.

With no admin key configured the whole API answers 404, as if it did not exist.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.config.model import MAX_BUDGET_USD, MAX_NAME_LENGTH, PERIODS, ROLES, Budget
from gateway.errors import AuthenticationFailed, BadRequest, GatewayError, NotFound, render_openai
from gateway.explain import explain, route_plugins
from gateway.handlers.endpoint import RequestIncoming
from gateway.keys import principal_from_record
from gateway.pipeline.admit import period_start
from gateway.pipeline.auth import authenticate, presented_key
from gateway.pipeline.parse import read_json
from gateway.responses import json_response
from gateway.state import GatewayState
from gateway.store.base import NANO, ScopeLimits

ADMIN_BODY_LIMIT = 1 << 20
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    admin_key = state.settings.admin_key
    if not admin_key:
        raise NotFound(f"Unknown path: {request.method} {request.url.path}")
    given = presented_key(request.headers) or ""
    if not hmac.compare_digest(given.encode(), admin_key.encode()):
        raise AuthenticationFailed("The admin API needs 'Authorization: Bearer <GATEWAY_ADMIN_KEY>'.")
    return state


def _ok(body: Any, status: int = 200) -> Response:
    return json_response(orjson.dumps(body), status, {})


def _name(value: Any, field: str) -> str:
    """budgets.yaml's name rule, and its length cap: an id is a URL path segment (``DELETE
    /admin/keys/{id}`` must be able to name it), a Redis key part and a log field."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH or not set(value) <= _NAME_OK:
        raise BadRequest(
            f"'{field}' must be a string of 1 to {MAX_NAME_LENGTH} letters, digits, '.', '_' or '-'.",
            param=field,
        )
    return value


def _budget_usd(value: Any) -> float | int:
    """A budget amount: a finite number from 0 to ``MAX_BUDGET_USD`` (the store's exact range)."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_BUDGET_USD
    ):
        raise BadRequest(f"'budget.usd' must be a number from 0 to {MAX_BUDGET_USD}.", param="budget.usd")
    return value


def _error(err: GatewayError) -> Response:
    return json_response(render_openai(err), err.status, err.headers)


async def create_key(request: Request) -> Response:
    try:
        state = _state(request)
        body = await read_json(RequestIncoming(request), ADMIN_BODY_LIMIT)
        tenant = _name(body.get("tenant"), "tenant")
        key_id = _name(body.get("id"), "id")
        runtime = state.runtime
        if tenant not in runtime.budgets.tenants:
            raise BadRequest(f"Unknown tenant '{tenant}': add it to budgets.yaml first.", param="tenant")
        role = body.get("role", "user")
        if role not in ROLES:
            raise BadRequest(f"'role' must be one of {', '.join(ROLES)}.", param="role")
        record: dict[str, Any] = {"id": key_id, "tenant": tenant, "role": role, "created": int(time.time())}
        budget = body.get("budget")
        if budget is not None:
            if not isinstance(budget, dict) or budget.get("period") not in PERIODS:
                raise BadRequest(
                    f"'budget' must be {{usd, period}} with period one of {', '.join(PERIODS)}.",
                    param="budget",
                )
            record["budget"] = {"usd": _budget_usd(budget.get("usd")), "period": budget["period"]}
        limits = body.get("limits") or {}
        if not isinstance(limits, dict) or any(
            k not in ("rpm", "tpm") or not isinstance(v, int) or isinstance(v, bool) or v < 1
            for k, v in limits.items()
        ):
            raise BadRequest("'limits' may hold rpm and tpm, positive integers.", param="limits")
        record["limits"] = limits
        taken = runtime.keys.file_key_ids() | {r["id"] for r in await state.store.list_keys(None)}
        if key_id in taken:
            raise GatewayError(
                f"A key with id '{key_id}' exists already.",
                status=409,
                type="invalid_request_error",
                code="key_exists",
            )
        secret = "sk-gw-" + secrets.token_urlsafe(32)
        await state.store.put_key(hashlib.sha256(secret.encode()).hexdigest(), record)
        await state.runtime_keys.refresh()
    except GatewayError as err:
        return _error(err)
    return _ok({"id": key_id, "tenant": tenant, "role": role, "secret": secret}, 201)


async def list_keys(request: Request) -> Response:
    try:
        state = _state(request)
        tenant = request.query_params.get("tenant")
        runtime = state.runtime
        keys = [
            {"id": k.id, "tenant": t.name, "role": k.role, "source": "budgets.yaml"}
            for t in runtime.budgets.tenants.values()
            if tenant in (None, t.name)
            for k in t.keys
        ]
        for record in await state.store.list_keys(tenant):
            keys.append({**{k: v for k, v in record.items() if k != "sha256"}, "source": "admin"})
    except GatewayError as err:
        return _error(err)
    return _ok({"object": "list", "data": keys})


async def delete_key(request: Request) -> Response:
    try:
        state = _state(request)
        key_id = request.path_params["key_id"]
        if key_id in state.runtime.keys.file_key_ids():
            raise GatewayError(
                f"Key '{key_id}' is defined in budgets.yaml: remove it there.",
                status=409,
                type="invalid_request_error",
                code="key_in_file",
            )
        if not await state.store.delete_key(key_id):
            raise NotFound(f"No run-time key with id '{key_id}'.", code="key_not_found")
        await state.runtime_keys.refresh()
    except GatewayError as err:
        return _error(err)
    return _ok({"id": key_id, "deleted": True})


def _usd(nano: int) -> float:
    return float(Decimal(nano) / NANO)


async def spend(request: Request) -> Response:
    try:
        state = _state(request)
        tenant_name = _name(request.query_params.get("tenant"), "tenant")
        key_id = request.query_params.get("key")
        if key_id is not None:
            key_id = _name(key_id, "key")
        runtime = state.runtime
        tenant = runtime.budgets.tenants.get(tenant_name)
        if tenant is None:
            raise NotFound(f"Unknown tenant '{tenant_name}'.", code="tenant_not_found")
        budget: Budget | None = tenant.budget
        scope_name = "t"
        if key_id is not None:
            key = next((k for k in tenant.keys if k.id == key_id), None)
            records = [r for r in await state.store.list_keys(tenant_name) if r["id"] == key_id]
            if key is None and not records:
                raise NotFound(f"Tenant '{tenant_name}' has no key '{key_id}'.", code="key_not_found")
            if key is not None:
                budget = key.budget
            else:
                runtime_key = principal_from_record(records[0], runtime.budgets)
                budget = runtime_key.key_budget if runtime_key is not None else None
            scope_name = f"k:{key_id}"
        now = time.time()
        start = period_start(budget, now)
        scope = ScopeLimits(
            scope=scope_name, period_start=start, budget_nano=round(budget.usd * NANO) if budget else None
        )
        used = await state.store.spend(tenant_name, scope)
    except GatewayError as err:
        return _error(err)
    limit = budget.usd if budget else None
    spent, reserved = _usd(used.spent_nano), _usd(used.reserved_nano)
    return _ok(
        {
            "tenant": tenant_name,
            "key": key_id,
            "period": budget.period if budget else None,
            "period_start": datetime.fromtimestamp(start, UTC).isoformat() if budget else None,
            "limit_usd": limit,
            "spent_usd": spent,
            "reserved_usd": reserved,
            "remaining_usd": max(limit - spent - reserved, 0.0) if limit is not None else None,
        }
    )


async def reload(request: Request) -> Response:
    try:
        _state(request)
    except GatewayError as err:
        return _error(err)
    errors = request.app.state.watcher.reload()
    return _ok({"reloaded": not errors, "errors": errors}, 200 if not errors else 422)


async def explain_request(request: Request) -> Response:
    try:
        state = _state(request)
        payload = await read_json(RequestIncoming(request), ADMIN_BODY_LIMIT)
        body = payload.get("body", payload)
        given = payload.get("headers") or {}
        if not isinstance(given, dict):
            raise BadRequest("'headers' must be an object of header names to values.", param="headers")
        headers = {str(k).lower(): str(v) for k, v in given.items()}
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise BadRequest("Send {body: {model, ...}, headers: {...}}.", param="body.model")
        runtime = state.runtime
        principal = authenticate(headers, runtime.keys) if presented_key(headers) else None
        lines = explain(runtime.routes, body["model"], headers.get("x-gateway-task"), principal)
        route = runtime.router.match(
            body["model"], headers.get("x-gateway-task"), principal.tenant if principal else None
        )
    except GatewayError as err:
        return _error(err)
    return _ok({"explain": lines, "plugins": route_plugins(route, runtime.routes) if route else []})
