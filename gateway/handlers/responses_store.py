"""``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``: stored turns.

Authenticated as every ``/v1`` endpoint (a reviewer key is refused, a delegation token works), and
always scoped to the caller's tenant: another tenant's id, a deleted or an expired one are the same
404. Off the hot path: none of this runs for a model call.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import BadRequest, GatewayError, NotFound, StoreUnavailable, render_openai
from gateway.logs import clip
from gateway.pipeline.auth import authenticate, for_proxy
from gateway.responses import json_response
from gateway.responses_api.store import ResponseNotFoundError, ResponseStore, StoredResponse
from gateway.state import GatewayState
from gateway.store.base import StoreUnavailableError

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")
"""What a response id may look like: it becomes part of a store key, so anything else is just absent."""
MAX_LIMIT = 100


async def _lookup(request: Request) -> tuple[ResponseStore, str, str]:
    """The store, the caller's tenant and the id from the path; ``GatewayError`` otherwise."""
    state: GatewayState = request.app.state.gateway
    principal = for_proxy(authenticate(request.headers, state.runtime.keys))
    store = state.shared.responses
    if store is None:
        raise NotFound("Stored responses are not enabled on this gateway.", code="not_found")
    return store, principal.tenant, request.path_params["response_id"]


async def _stored(store: ResponseStore, tenant: str, response_id: str) -> StoredResponse:
    if ID_RE.fullmatch(response_id) is None:
        raise _not_found(response_id)
    try:
        return await store.get(tenant, response_id)
    except ResponseNotFoundError:
        raise _not_found(response_id) from None
    except StoreUnavailableError as exc:
        raise _store_down() from exc


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{clip(response_id)}' not found.", param="response_id")


def _store_down() -> StoreUnavailable:
    return StoreUnavailable("The gateway's store is unreachable; try again shortly.")


def _error(err: GatewayError) -> Response:
    return json_response(render_openai(err), err.status, err.headers)


async def retrieve(request: Request) -> Response:
    try:
        store, tenant, response_id = await _lookup(request)
        stored = await _stored(store, tenant, response_id)
    except GatewayError as err:
        return _error(err)
    return json_response(orjson.dumps(stored.response), 200, {})


async def delete(request: Request) -> Response:
    try:
        store, tenant, response_id = await _lookup(request)
        if ID_RE.fullmatch(response_id) is None:
            raise _not_found(response_id)
        try:
            deleted = await store.delete(tenant, response_id)
        except StoreUnavailableError as exc:
            raise _store_down() from exc
        if not deleted:
            raise _not_found(response_id)
    except GatewayError as err:
        return _error(err)
    body = {"id": response_id, "object": "response", "deleted": True}
    return json_response(orjson.dumps(body), 200, {})


async def input_items(request: Request) -> Response:
    """OpenAI's cursor list: ``limit`` 1..100 (default 20), ``order`` asc|desc (default desc),
    ``after`` / ``before`` an item id of this list (exclusive)."""
    try:
        store, tenant, response_id = await _lookup(request)
        limit, order, after, before = _page_params(request)
        stored = await _stored(store, tenant, response_id)
    except GatewayError as err:
        return _error(err)
    items = list(stored.input_items)
    if order == "desc":
        items.reverse()
    ids = [str(item.get("id", "")) for item in items]
    try:
        start = ids.index(after) + 1 if after is not None else 0
        end = ids.index(before) if before is not None else len(items)
    except ValueError:
        cursor = "after" if after is not None and after not in ids else "before"
        return _error(BadRequest(f"No input item with id '{clip(str(after or before))}'.", param=cursor))
    window = items[start:end]
    page = window[:limit]
    body: dict[str, Any] = {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(window) > len(page),
    }
    return json_response(orjson.dumps(body), 200, {})


def _page_params(request: Request) -> tuple[int, str, str | None, str | None]:
    query = request.query_params
    raw_limit = query.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}.", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be 'asc' or 'desc'.", param="order")
    return limit, order, query.get("after") or None, query.get("before") or None
