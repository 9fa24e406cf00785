"""Responses the gateway sends: JSON bytes, and SSE streams that close the upstream on disconnect."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("gateway")


def json_response(body: bytes, status: int, headers: Mapping[str, str]) -> Response:
    return Response(body, status_code=status, headers=headers, media_type="application/json")


class SSEResponse(Response):
    """Streams an async generator of SSE frames.

    When the client goes away the generator is cancelled where it waits and closed at once, so the
    upstream request behind it is closed too instead of running on until its next chunk.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        headers: Mapping[str, str],
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.frames = frames
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.Event()
        finished = False

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                continue
            # Once the last frame is sent, a disconnect is the normal end, not a reason to cancel.
            if not finished:
                gone.set()
                task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for frame in self.frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            finished = True
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            task.uncancel()
            log.debug("client disconnected mid-stream")
        except OSError:
            log.debug("client connection lost mid-stream")
        finally:
            finished = True
            watcher.cancel()
            await self.frames.aclose()
            if self.on_close is not None:
                await self.on_close()
