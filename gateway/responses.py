"""What the pipeline answers (``Reply``), and its Starlette form for the ASGI path.

A ``Reply`` is an answer before any server frames it: the pipeline builds one per request, the
native HTTP path (``gateway/server.py``) writes it straight to the socket, and ``to_response`` turns it
into a Starlette response for everything that runs the app through ASGI (tests, other servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("gateway")

JSON = "application/json"
STALL_GRACE_S = 1.0
"""On the ASGI path, how long past its deadline a stream may stay blocked on a client that does not
read: the stream's own deadline ends it (with an error event) first whenever the client reads."""


class ClientStalled(ConnectionError):
    """A streamed answer's client stopped reading until the deadline (an OSError: a lost connection)."""


SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass(slots=True)
class Reply:
    """One answer: a JSON body, or an SSE stream of ``frames`` (status 200).

    ``after`` runs once the answer is out: after a JSON body is sent, or when a stream ends or is cut
    short (then ``frames`` is closed first). It runs whether or not the client is still there.
    ``deadline`` (``time.monotonic()``) is when a stream must be over: a client that stops reading
    cannot hold it, or the upstream behind it, past that (the server closes the connection).
    """

    status: int
    headers: dict[str, str]
    body: bytes = b""
    frames: AsyncGenerator[bytes, None] | None = None
    after: Callable[[], Awaitable[None]] | None = None
    deadline: float | None = None


def to_response(reply: Reply) -> Response:
    if reply.frames is not None:
        return SSEResponse(reply.frames, reply.headers, reply.after, reply.deadline)
    response = json_response(reply.body, reply.status, reply.headers)
    if reply.after is not None:
        response.background = BackgroundTask(reply.after)
    return response


def json_response(body: bytes, status: int, headers: Mapping[str, str]) -> Response:
    return Response(body, status_code=status, headers=headers, media_type=JSON)


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
        deadline: float | None = None,
    ) -> None:
        self.frames = frames
        self.on_close = on_close
        self.deadline = deadline
        self.status_code = 200
        self.background = None
        self.init_headers({**headers, **SSE_HEADERS})

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
        # one timer per stream: the server's ``send`` waits while the client does not read
        stall_s = None if self.deadline is None else self.deadline + STALL_GRACE_S - time.monotonic()
        async with stream_to_client(self.frames, self.on_close, gone.is_set):
            try:
                async with asyncio.timeout(stall_s):
                    await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                    async for frame in self.frames:
                        await send({"type": "http.response.body", "body": frame, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except TimeoutError:
                raise ClientStalled("the client stopped reading before the stream's deadline") from None
            finally:
                finished = True
                watcher.cancel()


@contextlib.asynccontextmanager
async def stream_to_client(
    frames: AsyncGenerator[bytes, None],
    after: Callable[[], Awaitable[None]] | None,
    client_left: Callable[[], bool],
) -> AsyncIterator[None]:
    """Around the writing of a stream: a cancellation because the client left (``client_left()``)
    ends it quietly, and so does a lost connection; however it ends, ``frames`` is closed (which
    closes the upstream behind it) and then ``after`` runs."""
    task = asyncio.current_task()
    assert task is not None
    try:
        yield
    except asyncio.CancelledError:
        if not client_left():
            raise
        task.uncancel()
        log.debug("client disconnected mid-stream")
    except ClientStalled:
        log.info("closed a stream at its deadline: the client stopped reading")
    except OSError:
        log.debug("client connection lost mid-stream")
    finally:
        await frames.aclose()
        if after is not None:
            await after()
