"""The RAG sidecar's app: the SDK's app around the RAG hooks and API, with the store opened in its
lifespan (the embedded Postgres started first when no ``RAG_DATABASE_URL`` is set)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.types import ASGIApp

from plugins.rag.api import Api, Backends
from plugins.rag.chunking import Settings
from plugins.rag.embed import Embedder
from plugins.rag.embedded import Embedded
from plugins.rag.hooks import Rag
from plugins.rag.ingest import Ingestor
from plugins.rag.settings import RagSettings
from plugins.rag.store import Store
from plugins.rag.tokens import encoding
from plugins.sdk import Answer, GatewayClient, HookCall, PluginSettings, create_app

DEFAULT_PORT = 8102
log = logging.getLogger("plugins.rag")


@dataclass(slots=True)
class Parts(Backends):
    """What the lifespan opened; tests reach the store through it."""

    rag: Rag | None = None


def build(
    settings: PluginSettings,
    rag_settings: RagSettings | None = None,
    *,
    gateway_transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[ASGIApp, Parts]:
    config = rag_settings or RagSettings.from_env()
    chunking = Settings(config.chunk_tokens, config.chunk_overlap)
    parts = Parts()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(encoding)  # the tokenizer built before the first document
        url = config.database_url
        server = None
        if url is None:
            log.info("starting the embedded Postgres in %s", config.data_dir)
            server = Embedded(config.data_dir, config.pg_shared_buffers)
            url = await asyncio.to_thread(server.start)
        try:
            store = await Store.open(url, config.dimensions)
        except BaseException:
            if server is not None:
                await asyncio.to_thread(server.stop)
            raise
        gateway = (
            GatewayClient(settings.gateway_url, transport=gateway_transport) if settings.gateway_url else None
        )
        embedder = Embedder(gateway, config.embedding_model, config.dimensions, config.batch)
        parts.store = store
        parts.ingestor = Ingestor(store, embedder, config.sync_chunks)
        parts.rag = Rag(store, embedder)
        try:
            yield
        finally:
            await parts.ingestor.aclose()
            if gateway is not None:
                await gateway.aclose()
            await store.close()
            if server is not None:
                await asyncio.to_thread(server.stop)

    async def pre(call: HookCall) -> Answer:
        assert parts.rag is not None, "the lifespan opens the store before any call"
        return await parts.rag.pre(call)

    async def post(call: HookCall) -> Answer:
        assert parts.rag is not None, "the lifespan opens the store before any call"
        return await parts.rag.post(call)

    api = Api(parts, chunking, config.max_upload_bytes)
    app = create_app(
        {"pre": pre, "post": post}, token=settings.token, api_routes=api.routes(), lifespan=lifespan
    )
    return app, parts
