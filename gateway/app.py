"""The ASGI app, assembled in one visible place: lifespan, routes, error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import GatewayError, NotFound, ServerError, render_openai
from gateway.handlers import health, openai
from gateway.handlers.anthropic import messages
from gateway.metrics import Metrics
from gateway.reload import ConfigWatcher, load
from gateway.responses import json_response
from gateway.runtime import build_runtime
from gateway.settings import Settings
from gateway.state import GatewayState

log = logging.getLogger("gateway")


def create_app(
    settings: Settings | None = None, *, transport: httpx.AsyncBaseTransport | None = None
) -> Starlette:
    """Build the gateway app. ``transport`` replaces the network for upstream calls (the test seam)."""
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        routes, budgets = load(settings.routes_path, settings.budgets_path)
        client = httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(max_connections=2000, max_keepalive_connections=256, keepalive_expiry=30),
            timeout=httpx.Timeout(60.0),
            follow_redirects=False,
        )
        metrics = Metrics()
        state = GatewayState(settings, build_runtime(routes, budgets, client), client, metrics)
        watcher = ConfigWatcher(
            settings.routes_path,
            settings.budgets_path,
            client,
            metrics,
            state.publish,
            state.runtime,
            settings.reload_interval_s,
        )
        app.state.gateway = state
        app.state.watcher = watcher
        task = asyncio.create_task(watcher.run(), name="config-watcher")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.aclose()

    routes = [
        Route("/v1/chat/completions", openai.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai.completions, methods=["POST"]),
        Route("/v1/embeddings", openai.embeddings, methods=["POST"]),
        Route("/v1/models", openai.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai.get_model, methods=["GET"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err: GatewayError = NotFound(f"Unknown path: {request.method} {request.url.path}")
    else:
        err = GatewayError(str(exc.detail), status=exc.status_code, type="invalid_request_error")
    return json_response(render_openai(err), err.status, dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    err = ServerError("The gateway hit an internal error.")
    return json_response(render_openai(err), err.status, {})


def app_from_env() -> Starlette:
    """Factory for uvicorn workers (``--factory gateway.app:app_from_env``)."""
    return create_app(Settings.from_env())
