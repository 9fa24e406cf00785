"""Who may call ``/admin/*``, and the audit line every admin call writes.

The operator (``GATEWAY_ADMIN_KEY``) may do everything, for every tenant. A key with role ``admin``
manages its own tenant only: its keys (create, list, delete) and its spend; it may not mint ``admin``
keys (those come from the operator or budgets.yaml, so one leaked admin key cannot copy itself), and
reload and explain stay the operator's. Every other key, and every delegation token, gets 403
``permission_error``.

Each admin call writes one JSON line to the ``gateway.audit`` logger: who (``operator`` or
``tenant/key id``), what, on which target, the answer's status, when and the request id. Never a
secret: not the presented key, not a created key's secret, not explain's headers.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.context import new_request_id
from gateway.errors import NotFound, PermissionDenied
from gateway.pipeline.auth import Principal, authenticate, presented_key
from gateway.state import GatewayState

audit_log = logging.getLogger("gateway.audit")
_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:")


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal | None
    """None: the operator (``GATEWAY_ADMIN_KEY``)."""

    @property
    def operator(self) -> bool:
        return self.principal is None

    @property
    def role(self) -> str:
        return "operator" if self.principal is None else self.principal.role

    @property
    def who(self) -> str:
        p = self.principal
        return "operator" if p is None else f"{p.tenant}/{p.key_id}"

    def tenant(self, asked: str | None) -> str | None:
        """The tenant this call acts on: an admin key's own (asking for another is 403); the operator's
        choice (None: every tenant, where the endpoint allows it)."""
        p = self.principal
        if p is None:
            return asked
        if asked is not None and asked != p.tenant:
            raise denied(f"This admin key manages tenant '{p.tenant}' only.")
        return p.tenant


def denied(message: str) -> PermissionDenied:
    return PermissionDenied(message, code="permission_denied")


def caller(request: Request, *, operator_only: bool = False) -> tuple[GatewayState, Caller]:
    """The state and the caller of an admin endpoint, or the error to answer with."""
    state: GatewayState = request.app.state.gateway
    admin_key = state.settings.admin_key
    given = presented_key(request.headers)
    if admin_key and given is not None and hmac.compare_digest(given.encode(), admin_key.encode()):
        request.state.caller = who = Caller(None)
        return state, who
    if not admin_key and given is None:  # no operator and no key: the API shows no sign of itself
        raise NotFound(f"Unknown path: {request.method} {request.url.path}")
    principal = authenticate(request.headers, state.runtime.keys)
    request.state.caller = who = Caller(principal)
    if principal.delegated:
        raise denied("A delegation token works only on the /v1/* proxy endpoints.")
    if principal.role != "admin":
        raise denied(f"The admin API needs an admin key; this key's role is '{principal.role}'.")
    if operator_only:
        raise denied("Only the operator key (GATEWAY_ADMIN_KEY) may call this endpoint.")
    return state, who


Handler = Callable[[Request], Awaitable[Response]]


def audited(action: str) -> Callable[[Handler], Handler]:
    """Write the audit line after the handler answered; handlers name their target in
    ``request.state.audit_target``."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: Request) -> Response:
            asked = request.headers.get("x-request-id", "")
            request_id = asked if 0 < len(asked) <= 128 and set(asked) <= _REQUEST_ID_OK else new_request_id()
            response = await handler(request)
            response.headers["x-request-id"] = request_id
            who: Caller | None = getattr(request.state, "caller", None)
            line: dict[str, Any] = {
                "audit": action,
                "who": who.who if who is not None else "unauthenticated",
                "role": who.role if who is not None else None,
                "target": getattr(request.state, "audit_target", None),
                "status": response.status_code,
                "request_id": request_id,
                "time": datetime.fromtimestamp(time.time(), UTC).isoformat(),
            }
            audit_log.info(orjson.dumps(line).decode())
            state: GatewayState | None = getattr(request.app.state, "gateway", None)
            if state is not None and state.ledger is not None:  # the audit table (gateway/ledger)
                state.ledger.audit(audit_row(line, who))
            return response

        return run

    return wrap


def target(request: Request, **fields: Any) -> None:
    request.state.audit_target = {k: v for k, v in fields.items() if v is not None}


def audit_row(line: dict[str, Any], who: Caller | None) -> dict[str, Any]:
    """The audit table's row of an audit line: kind ``admin`` (tool calls and reviews come later)."""
    target = line["target"]
    tenant = target.get("tenant") if isinstance(target, dict) else None
    if tenant is None and who is not None and who.principal is not None:
        tenant = who.principal.tenant
    return {
        "id": new_request_id(),
        "request_id": line["request_id"],
        "ts": time.time(),
        "kind": "admin",
        "action": line["audit"],
        "who": line["who"],
        "role": line["role"],
        "tenant": tenant if isinstance(tenant, str) else None,
        "target": orjson.dumps(target).decode() if target is not None else None,
        "status": line["status"],
    }
