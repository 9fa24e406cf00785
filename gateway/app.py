"""The ASGI app, assembled in one visible place: lifespan, routes, error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import delegation, logs, otel
from gateway.egress import Egress
from gateway.errors import GatewayError, NotFound, ServerError, render_openai
from gateway.handlers import admin, health, ledger_api, openai, plugin_api, responses_store
from gateway.handlers.anthropic import messages
from gateway.handlers.endpoint import ProxyEndpoint
from gateway.handlers.responses import responses
from gateway.keys import RuntimeKeys
from gateway.ledger import open_ledger
from gateway.limits import ConnectionGuard
from gateway.listeners import AdminSplit
from gateway.metrics import Metrics, mark_dead
from gateway.pipeline.breaker import BreakerRegistry
from gateway.pipeline.overload import Gate
from gateway.pipeline.spend import Settler
from gateway.plugins.secret import from_env as secret_from_env
from gateway.reload import ConfigWatcher, load
from gateway.responses import json_response
from gateway.responses_api import build_response_store
from gateway.runtime import Shared, build_runtime
from gateway.settings import Settings
from gateway.state import GatewayState
from gateway.store import build_store, warn_if_evicting
from gateway.store.durable import StateFile
from gateway.store.memory import MemoryStore
from gateway.tokens import prepare_encodings
from gateway.tools.endpoint import McpEndpoint
from gateway.tools.hub import ToolHub
from gateway.transport import FastTransport

log = logging.getLogger("gateway")


def create_app(
    settings: Settings | None = None, *, transport: httpx.AsyncBaseTransport | None = None
) -> GatewayApp:
    """Build the gateway app. ``transport`` replaces the network for upstream calls (the test seam)."""
    settings = settings or Settings.from_env()
    tools = ToolHub()  # MCP: nothing is imported or started until /mcp or a hosted tool is first used
    mcp = McpEndpoint(tools)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        prepare_encodings()  # fails here, at start-up, when the tokenizer data is missing
        routes, budgets = load(settings.routes_path, settings.budgets_path)
        # A lean HTTP/1.1 keep-alive transport (gateway/transport.py) behind httpx's request/response types.
        upstream = transport or FastTransport(max_connections=2000, max_idle=256, keepalive_expiry=30)
        # Providers behind a proxy (HTTPS_PROXY, NO_PROXY...) or with tls: settings get httpx's transport.
        egress = Egress(upstream) if transport is None else None
        store = build_store(settings.redis_url, timeout_s=0.9)
        # The response cache may live on a Redis of its own, where eviction is allowed.
        cache_url = settings.cache_redis_url
        cache_store = build_store(cache_url, timeout_s=0.9) if cache_url else None
        runtime_keys = RuntimeKeys(store)
        # Settings built in code (tests, embedders) still see the environment's secret.
        secrets_value = settings.delegation_secret or os.environ.get(delegation.SECRET_ENV)
        metrics = Metrics()
        breakers = BreakerRegistry(metrics.circuit_state, settings.redis_url)
        gate = Gate(routes.defaults.max_concurrent_upstream)
        fallback = MemoryStore()
        settler = Settler(store, fallback, metrics)
        shared = Shared(
            upstream,
            store,
            fallback,
            runtime_keys.lookup,
            breakers,
            gate,
            cache_store=cache_store,
            releases=settler,  # admissions that failed are released through the settler's queue
            known=settler.known,
            runtime_keys_by_id=runtime_keys.lookup_id,
            # One worker and no Redis: this process is alone and may make its own secret; the first of
            # a comma-separated GATEWAY_DELEGATION_SECRET signs, every one verifies (rotation).
            delegation_secret=secret_from_env(
                {delegation.SECRET_ENV: secrets_value or ""},
                alone=settings.workers == 1 and settings.redis_url is None,
            ),
            delegation_verifying=delegation.parse_secrets(secrets_value),
            egress=egress,
            responses=build_response_store(store),
        )
        # The spend ledger's writer thread (gateway/ledger); None when off.
        ledger = open_ledger(settings.ledger_url, metrics, redis=settings.redis_url is not None)
        state = GatewayState(
            settings,
            build_runtime(routes, budgets, shared),
            shared,
            metrics,
            runtime_keys,
            settler,
            ledger,
            tools,
        )
        watcher = ConfigWatcher(
            settings.routes_path,
            settings.budgets_path,
            shared,
            metrics,
            state.publish,
            state.runtime,
            settings.reload_interval_s,
        )
        # Tracing is off (None) unless OTEL_EXPORTER_OTLP_ENDPOINT or GATEWAY_OTEL=1 is set.
        metrics.spans = otel.from_env(lambda: state.runtime.routes.providers)
        app.state.gateway = state
        app.state.watcher = watcher
        app.state.plugin_api = plugins = plugin_api.PluginApi()
        app.state.tools = tools
        await breakers.sync()  # the shared circuit states, before the first request is served
        await warn_if_evicting(store)
        # Without Redis, spend and run-time keys live on in a local file (gateway/store/durable.py).
        state_file = (
            StateFile.open(settings.state_file, store)
            if isinstance(store, MemoryStore) and settings.state_file
            else None
        )
        jobs = [
            asyncio.create_task(watcher.run(), name="config-watcher"),
            asyncio.create_task(runtime_keys.run(), name="runtime-keys"),
            asyncio.create_task(settler.run(), name="settlement-retry"),
            asyncio.create_task(breakers.run(), name="circuit-breakers"),
        ]
        if state_file is not None:
            jobs.append(asyncio.create_task(state_file.run(), name="state-file"))
        try:
            yield
        finally:
            # uvicorn gets here after in-flight requests and streams ended (or the grace period ran out):
            # their settlements run in the background, so wait for them, then retry any the store refused.
            await state.pipeline.drain()
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            # After the retry job is stopped, so the two never write the same settlement.
            try:
                async with asyncio.timeout(5):
                    await settler.flush()
            except TimeoutError:
                log.error("settlement flush timed out at shutdown: %d not written", settler.pending)
            if ledger is not None:  # after the last settlement queued its row
                await asyncio.to_thread(ledger.close)
            if state_file is not None:
                await state_file.close()  # after the last settlement reached the store
            await upstream.aclose()
            if egress is not None:
                await egress.aclose()
            await plugins.aclose()
            await mcp.aclose()
            await tools.aclose()
            await state.plugin_transport.aclose()
            await store.close()
            if cache_store is not None:
                await cache_store.close()
            if metrics.spans is not None:
                metrics.spans.shutdown()  # exports the spans still batched
            await breakers.close()
            # In multiprocess mode this worker's live gauges (circuit states) must stop counting once it
            # is gone; its counters stay in the directory so totals never go back.
            mark_dead(os.getpid())

    # The proxy endpoints: POST only, and also served ahead of Starlette's stack (GatewayApp).
    proxied = [openai.chat_completions, openai.completions, openai.embeddings, messages, responses]
    routes = [
        *(Route(endpoint.path, endpoint.asgi, methods=["POST"]) for endpoint in proxied),
        Route("/v1/models", openai.list_models, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses_store.retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses_store.delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", responses_store.input_items, methods=["GET"]),
        Route("/v1/models/{model:path}", openai.get_model, methods=["GET"]),
        Route("/admin/keys", admin.create_key, methods=["POST"]),
        Route("/admin/keys", admin.list_keys, methods=["GET"]),
        Route("/admin/keys/{key_id}", admin.delete_key, methods=["DELETE"]),
        Route("/admin/spend", admin.spend, methods=["GET"]),
        Route("/admin/ledger", ledger_api.ledger_report, methods=["GET"]),
        Route("/admin/reload", admin.reload, methods=["POST"]),
        Route("/admin/explain", admin.explain_request, methods=["POST"]),
        Route("/v1/plugins/{name}/{path:path}", plugin_api.forward, methods=plugin_api.METHODS),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/mcp", mcp, methods=["GET", "POST", "DELETE"]),  # after the health probes: they stay first
    ]
    return GatewayApp(
        proxied,
        guard=ConnectionGuard(settings),
        admin_split=AdminSplit(settings.admin_port) if settings.admin_port is not None else None,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
    )


class GatewayApp(Starlette):
    """Starlette, with the proxy endpoints (POST only) called before its middleware and router.

    Those endpoints catch their own errors and answer every failure in the API's error format, so the
    exception middleware and route matching would only add CPU to every proxied request (~35 µs).
    Everything else (admin, health, metrics, 404/405 answers) goes through Starlette as usual.
    ``gateway/server.py`` serves ``proxied`` without ASGI at all.
    """

    def __init__(
        self,
        proxied: Iterable[ProxyEndpoint],
        guard: ConnectionGuard | None = None,
        admin_split: AdminSplit | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.proxied = {endpoint.path: endpoint for endpoint in proxied}
        self.guard = guard or ConnectionGuard()  # the connection limits (gateway/limits.py)
        self.admin_split = admin_split  # GATEWAY_ADMIN_PORT: which paths each port serves

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        split = self.admin_split
        if (
            split is not None
            and scope["type"] == "http"
            and not split.allowed(scope["path"], scope["server"])
        ):
            request = Request(scope, receive)
            response = await _http_error(request, HTTPException(404))
            await response(scope, receive, send)
            return
        endpoint = self.proxied.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        request = Request(scope, receive)
        try:
            response = await endpoint.asgi(request)
        except Exception as exc:  # the endpoints handle their own errors; this is a bug's last stop
            response = await _unexpected(request, exc)
        await response(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err: GatewayError = NotFound(f"Unknown path: {request.method} {request.url.path}")
    else:
        err = GatewayError(str(exc.detail), status=exc.status_code, type="invalid_request_error")
    return json_response(render_openai(err), err.status, dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", logs.clip(request.url.path), exc_info=exc)
    err = ServerError("The gateway hit an internal error.")
    return json_response(render_openai(err), err.status, {})


def app_from_env() -> GatewayApp:
    """Factory for uvicorn workers (``--factory gateway.app:app_from_env``)."""
    logs.configure()  # a spawned worker starts with no log handler of its own
    return create_app(Settings.from_env())
