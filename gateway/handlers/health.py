"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

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
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
