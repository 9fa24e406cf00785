"""The Starlette app factory every sidecar is served by.

Routes: ``POST /hooks/{hook}`` (the hook functions given), ``/api/...`` (the plugin's own API, forwarded
by the gateway from ``/v1/plugins/{name}/...``) and ``GET /healthz`` (open, for probes). Every other call
needs ``Authorization: Bearer <plugin token>``: the gateway sends it, nobody else has it.

Status codes the gateway reads: 200 with an answer; 400 for a call that breaks the protocol; 401 without
the token; 500 when the plugin itself failed. Anything but a 200 is a plugin failure to the gateway, which
then applies the route's ``on_error``.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from plugins.sdk.protocol import HOOKS, Answer, HookCall, ProtocolError, Rejected

log = logging.getLogger("plugins.sdk")

HookFn = Callable[[HookCall], Awaitable[Answer]]
Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    """An OpenAI-style error body, so a person reading the gateway's log sees one shape everywhere."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def token_matches(expected: str, authorization: str | None) -> bool:
    """Constant-time check of an ``Authorization`` header against ``Bearer <expected>``."""
    presented = (authorization or "").encode()
    return hmac.compare_digest(presented, b"Bearer " + expected.encode())


class RequireToken:
    """Pure ASGI middleware: 401 for any HTTP call but ``/healthz`` without the plugin token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/healthz":
            authorization = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
            if not token_matches(self.token, authorization):
                response = error(401, "missing or wrong plugin token", "authentication_error")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    hooks: Mapping[str, HookFn],
    *,
    token: str | None,
    api_routes: Sequence[BaseRoute] = (),
    routes: Sequence[BaseRoute] = (),
    lifespan: Lifespan | None = None,
) -> ASGIApp:
    """Build the sidecar's ASGI app.

    ``hooks`` maps ``"pre" | "post" | "tool"`` to an async function ``(HookCall) -> Answer``; a hook the
    plugin does not serve answers 404. ``token`` is the plugin token the gateway sends (``PLUGIN_TOKEN``);
    ``None`` turns the check off, which only a sidecar bound to loopback should do. ``api_routes`` are
    mounted under ``/api``; ``routes`` beside them (``/metrics``, say), behind the token like every
    path but ``/healthz``. ``lifespan`` opens and closes the plugin's own resources (clients, stores).
    """
    unknown = set(hooks) - set(HOOKS)
    if unknown:
        raise ValueError(f"unknown hooks {sorted(unknown)}: the protocol has {list(HOOKS)}")

    async def hook_endpoint(request: Request) -> Response:
        name = request.path_params["hook"]
        fn = hooks.get(name)
        if fn is None:
            return error(404, f"this plugin does not serve the {name!r} hook", "invalid_request_error")
        try:
            call = HookCall.from_json(json.loads(await request.body()), name)
        except (ValueError, TypeError) as exc:  # ProtocolError, bad JSON, a field of the wrong type
            message = str(exc) if isinstance(exc, ProtocolError) else f"bad hook call: {exc}"
            return error(400, message, "invalid_request_error", "protocol_error")
        try:
            answer = await fn(call)
        except Rejected as rejected:
            answer = rejected.answer
        except ProtocolError as exc:  # e.g. the route's options for this plugin are wrong
            return error(400, str(exc), "invalid_request_error", "protocol_error")
        except Exception:
            # The gateway treats a 500 as a plugin failure (on_error); the traceback stays in our log.
            log.exception("%s hook failed (request %s)", name, call.request_id)
            return error(500, f"the plugin's {name} hook failed", "server_error", "plugin_error")
        return JSONResponse(answer.to_json())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    served: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/hooks/{hook}", hook_endpoint, methods=["POST"]),
        *routes,
    ]
    if api_routes:
        served.append(Mount("/api", routes=list(api_routes)))
    app: ASGIApp = Starlette(routes=served, lifespan=lifespan)
    if token is not None:
        app = RequireToken(app, token)
    return app
