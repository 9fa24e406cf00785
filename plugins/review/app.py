"""The review sidecar's app: the SDK's app around the three hooks, the review API and ``/metrics``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from plugins.review.api import ReviewApi
from plugins.review.hooks import Review
from plugins.review.metrics import ReviewMetrics
from plugins.review.store import MemoryQueue, Queue, RedisQueue
from plugins.sdk import PluginSettings, create_app

DEFAULT_PORT = 8103


def build(settings: PluginSettings) -> tuple[ASGIApp, Review]:
    """The app and the review behind it (tests look at its queue)."""
    queue: Queue = RedisQueue(settings.redis_url) if settings.redis_url else MemoryQueue()
    review = Review(queue, ReviewMetrics())
    api = ReviewApi(review)

    async def metrics(request: Request) -> Response:
        body = review.metrics.render(await queue.depth())
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await review.aclose()

    app = create_app(
        {"pre": review.pre, "post": review.post, "tool": review.tool},
        token=settings.token,
        api_routes=api.routes(),
        routes=[Route("/metrics", metrics, methods=["GET"])],
        lifespan=lifespan,
    )
    return app, review
