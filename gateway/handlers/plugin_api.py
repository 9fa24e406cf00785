"""``/v1/plugins/{name}/{path}``: a sidecar plugin's own API, behind the gateway's keys.

A call is forwarded to ``{url}/api/{path}`` (query string kept, any method) once the caller's key is
checked, with who is calling in ``x-gateway-tenant``, ``x-gateway-key-id``, ``x-gateway-role``,
``x-request-id``, a fresh delegation token in ``x-gateway-delegation`` and the plugin's token as
``Authorization``. The caller's own key is never forwarded, nor any ``x-gateway-*`` header it sent
(a client must not be able to claim another tenant). Both bodies stream: an upload reaches the sidecar
as it arrives, and the sidecar's status, headers and body (SSE included) come back as they are.

Who may call: ``user`` and ``admin`` keys any API plugin but ``review``; ``reviewer`` and ``admin``
keys the ``review`` plugin, where a ``user`` key may only poll a held answer (``GET reviews/{id}``, the
``hold: async`` contract). The operator key has no tenant, so it has no plugin API to call; a
delegation token is refused too, since forwarding it would mint another. All of these are 403.

The review page's static files (``GET``/``HEAD /v1/plugins/review/ui/...``, plain path segments only)
are forwarded without a key and without any identity header: a browser loads a page without an
``Authorization`` header, and the page holds no data; every call its script makes carries the
reviewer's key and goes through the checks above.

Audit: a sidecar's answer may carry ``x-gateway-audit: <JSON object with an action>`` (a review
decision, say). The gateway writes it to the audit table (kind = the plugin's name), stamping who
called, the tenant, role, request id and status itself, so a sidecar cannot name another caller; the
header never reaches the client.

This is off the proxy's hot path, so it uses httpx's client (streaming both ways) rather than the
gateway's own upstream transport.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from gateway import delegation
from gateway.context import new_request_id
from gateway.errors import GatewayError, NotFound, PermissionDenied, ServerError, render_openai
from gateway.pipeline.auth import Principal, authenticate, presented_key
from gateway.responses import json_response
from gateway.state import GatewayState

log = logging.getLogger("gateway.plugins")

REVIEW = "review"
"""The plugin whose API is the review surface: reviewer keys may call it, and only it."""
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "x-api-key"}
CONNECT_TIMEOUT_S = 5.0
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
AUDIT_HEADER = "x-gateway-audit"
_PUBLIC = re.compile(r"ui(?:/(?:[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*)?)?")
"""The review page's static files: no segment starts with a dot, so no ``..``, and nothing encoded."""
_CLIENT_POLL = re.compile(r"reviews/[A-Za-z0-9._:-]{1,128}")
audit_log = logging.getLogger("gateway.audit")


class PluginApi:
    """The client the gateway calls plugin APIs with; one per app, closed at shutdown."""

    def __init__(self) -> None:
        # No pool limit: each call is a caller's own request; the sidecar sets its own limits.
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None), follow_redirects=False)

    async def aclose(self) -> None:
        await self.client.aclose()


def _may_call(principal: Principal, plugin: str, method: str = "GET", path: str = "") -> None:
    if principal.delegated:
        raise _denied("A delegation token works only on the /v1/* proxy endpoints, not on plugin APIs.")
    role = principal.role
    if plugin == REVIEW and role not in ("reviewer", "admin"):
        if method in ("GET", "HEAD") and _CLIENT_POLL.fullmatch(path):
            return  # the client polls its own held answer; the sidecar checks it is this key's
        raise _denied("The review API needs a reviewer or admin key.")
    if plugin != REVIEW and role == "reviewer":
        raise _denied("A reviewer key works only on the review surfaces (/v1/plugins/review/...).")


def _denied(message: str) -> PermissionDenied:
    return PermissionDenied(message, code="permission_denied")


def _principal(request: Request, state: GatewayState) -> Principal:
    admin_key = state.settings.admin_key
    given = presented_key(request.headers)
    if admin_key and given is not None and hmac.compare_digest(given.encode(), admin_key.encode()):
        raise _denied("The operator key has no tenant: call plugin APIs with a tenant's key.")
    return authenticate(request.headers, state.runtime.keys)


async def forward(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    api: PluginApi = request.app.state.plugin_api
    name = request.path_params["name"]
    request_id = new_request_id()
    path = _raw_path(request)
    public = name == REVIEW and request.method in ("GET", "HEAD") and _PUBLIC.fullmatch(path) is not None
    principal: Principal | None = None
    try:
        runtime = state.runtime
        if not public:
            principal = _principal(request, state)
        plugin = runtime.routes.plugins.get(name)
        if plugin is None or not plugin.api:
            raise NotFound(f"No plugin API named '{name}'.", param="name", code="plugin_not_found")
        if principal is not None:
            _may_call(principal, name, request.method, path)
        # RFC 9110 7.6.1: headers the Connection header names are hop-by-hop too
        listed = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
        headers = [
            (k, v)
            for k, v in request.headers.items()
            if k not in _NOT_FORWARDED
            and k not in listed
            and not k.startswith("x-gateway-")
            and k != "x-request-id"
        ]
        headers.append(("x-request-id", request_id))
        if principal is not None:
            expires = int(time.time() + runtime.routes.defaults.timeout_s)
            secret = state.shared.delegation_secret
            assert (
                secret is not None
            )  # a config with plugin APIs and no secret is refused (plugins/secret.py)
            token = delegation.mint(
                secret,
                delegation.Delegation(principal.tenant, principal.key_id, request_id, expires),
            )
            headers += [
                ("x-gateway-tenant", principal.tenant),
                ("x-gateway-key-id", principal.key_id),
                ("x-gateway-role", principal.role),
                ("x-gateway-delegation", token),
            ]
        if plugin.token:
            headers.append(("authorization", f"Bearer {plugin.token}"))
        url = f"{plugin.url.rstrip('/')}/api/{path}"
        query = request.scope.get("query_string", b"")
        if query and not public:
            url += "?" + query.decode("latin-1")
        read_s = max(plugin.timeout_s, runtime.routes.defaults.timeout_s)
        outgoing = api.client.build_request(
            request.method,
            url,
            headers=headers,
            content=_body(request) if _has_body(request) else None,
            timeout=httpx.Timeout(read_s, connect=CONNECT_TIMEOUT_S),
        )
        try:
            answer = await api.client.send(outgoing, stream=True)
        except (httpx.TransportError, ClientDisconnect) as exc:
            log.warning("plugin %s API call %s failed: %s: %s", name, request_id, type(exc).__name__, exc)
            raise ServerError(
                f"The plugin '{name}' is unavailable.", status=503, code="plugin_unavailable", param=name
            ) from None
    except GatewayError as err:
        return json_response(render_openai(err), err.status, {**err.headers, "x-request-id": request_id})
    out = [
        (k, v)
        for k, v in answer.headers.multi_items()
        if k.lower() not in HOP_BY_HOP and k.lower() != AUDIT_HEADER
    ]
    described = answer.headers.get(AUDIT_HEADER)
    if described is not None and principal is not None:
        _audit(state, name, principal, request_id, answer.status_code, described)
    response = StreamingResponse(
        _relay(answer, name, request_id),
        status_code=answer.status_code,
        background=BackgroundTask(answer.aclose),
    )
    # the sidecar's headers as they are (raw bytes, so content-length and -encoding still hold)
    response.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out]
    response.raw_headers.append((b"x-request-id", request_id.encode()))
    return response


def _audit(
    state: GatewayState, name: str, principal: Principal, request_id: str, status: int, described: str
) -> None:
    """The sidecar's ``x-gateway-audit`` as one audit line and table row; who, tenant and role are the
    gateway's own (a sidecar's JSON cannot override them). A malformed description is logged, not
    written: the call itself already happened."""
    try:
        target: Any = orjson.loads(described)
    except orjson.JSONDecodeError:
        target = None
    action = target.get("action") if isinstance(target, dict) else None
    if not isinstance(action, str) or not 0 < len(action) <= 64:
        log.warning("plugin %s sent an audit header that is not a JSON object with an action", name)
        return
    who = f"{principal.tenant}/{principal.key_id}"
    line = {"audit": f"{name}.{action}", "who": who, "role": principal.role, "target": target}
    line.update(status=status, request_id=request_id, time=time.time())
    audit_log.info(orjson.dumps(line).decode())
    if state.ledger is not None:
        state.ledger.audit(
            {
                "id": new_request_id(),
                "request_id": request_id,
                "ts": time.time(),
                "kind": name[:32],
                "action": action,
                "who": who,
                "role": principal.role,
                "tenant": principal.tenant,
                "target": orjson.dumps(target).decode(),
                "status": status,
            }
        )


def _raw_path(request: Request) -> str:
    """``{path}`` as the client encoded it (``%2F`` inside a segment stays one segment), not decoded."""
    raw: bytes | None = request.scope.get("raw_path")
    if not raw:
        return str(request.path_params["path"])
    return raw.decode("latin-1").split("?", 1)[0].split("/", 4)[4]


def _has_body(request: Request) -> bool:
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def _relay(answer: httpx.Response, name: str, request_id: str) -> AsyncIterator[bytes]:
    """The sidecar's body as it comes; a sidecar that breaks mid-answer ends the answer there (its
    status is already sent) and is logged."""
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    except httpx.TransportError as exc:
        log.warning("plugin %s API answer %s cut short: %s", name, request_id, type(exc).__name__)
