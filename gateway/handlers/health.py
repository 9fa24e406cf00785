"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import AuthenticationFailed, render_openai
from gateway.listeners import bearer_ok
from gateway.responses import json_response
from gateway.state import GatewayState


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    state: GatewayState | None = getattr(request.app.state, "gateway", None)
    checks = {"config": state is not None, "store": state is not None and await state.store.ping()}
    ready = all(checks.values())
    body = orjson.dumps({"status": "ready" if ready else "not ready", "checks": checks})
    return Response(body, status_code=200 if ready else 503, media_type="application/json")


async def metrics(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    token = state.settings.metrics_token
    if token is not None and not bearer_ok(request.headers.get("authorization"), token):
        err = AuthenticationFailed("/metrics needs 'Authorization: Bearer <GATEWAY_METRICS_TOKEN>'.")
        return json_response(render_openai(err), err.status, {"www-authenticate": "Bearer"})
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
