"""The guard sidecar's app: the SDK's app around the guard's two hooks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.types import ASGIApp

from plugins.guard.hooks import Guard
from plugins.guard.mask import MaskStore, MemoryStore, RedisStore
from plugins.sdk import GatewayClient, PluginSettings, create_app

DEFAULT_PORT = 8101


def build(
    settings: PluginSettings, *, gateway_transport: httpx.AsyncBaseTransport | None = None
) -> tuple[ASGIApp, Guard]:
    """The app and the guard behind it (tests look at the guard's mask store)."""
    store: MaskStore = RedisStore(settings.redis_url) if settings.redis_url else MemoryStore()
    gateway = (
        GatewayClient(settings.gateway_url, transport=gateway_transport) if settings.gateway_url else None
    )
    guard = Guard(store, gateway)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await guard.aclose()

    app = create_app({"pre": guard.pre, "post": guard.post}, token=settings.token, lifespan=lifespan)
    return app, guard
