"""A tiny sidecar with a plugin API, run as its own process on loopback by the plugin API tests.

``python tests/plugin_api_sidecar.py PORT TOKEN [GATEWAY_URL]``. Every ``/api/*`` call needs
``Authorization: Bearer TOKEN``, as DESIGN.md's protocol asks of a sidecar.

- ``ANY /api/echo/{path}``: what arrived (method, path, query, headers, body length)
- ``POST /api/upload``: counts the bytes received as they stream in, never holding them
- ``GET /api/sse``: three SSE events, 50 ms apart
- ``GET /api/gated``: one SSE event, then waits (at most 5 s) for ``POST /api/release``, then says
  whether it was released: a client can only release it if the first event reached it unbuffered
- ``GET /api/status/{code}``: that status, a header of its own and a plain-text body
- ``POST /api/delegate``: calls the gateway's ``/v1/chat/completions`` with the delegation token it
  was handed (body: the chat request); answers the gateway's status and body
"""

from __future__ import annotations

import asyncio
import resource
import sys
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 0
TOKEN = sys.argv[2] if len(sys.argv) > 2 else ""
GATEWAY = sys.argv[3] if len(sys.argv) > 3 else ""


def _refused(request: Request) -> Response | None:
    if TOKEN and request.headers.get("authorization") != f"Bearer {TOKEN}":
        return JSONResponse({"error": "plugin token required"}, status_code=401)
    return None


async def echo(request: Request) -> Response:
    if (refused := _refused(request)) is not None:
        return refused
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return JSONResponse(
        {
            "method": request.method,
            "path": request.scope["raw_path"].decode(),
            "query": request.url.query,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_bytes": size,
        }
    )


async def upload(request: Request) -> Response:
    if (refused := _refused(request)) is not None:
        return refused
    size = chunks = 0
    async for chunk in request.stream():
        size += len(chunk)
        chunks += 1
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return JSONResponse({"bytes": size, "chunks": chunks, "sidecar_peak_rss_kb": peak_kb})


async def sse(request: Request) -> Response:
    if (refused := _refused(request)) is not None:
        return refused

    async def events() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"data: event {i}\n\n".encode()
            await asyncio.sleep(0.05)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"x-sidecar": "sse"})


RELEASED = asyncio.Event()


async def gated(request: Request) -> Response:
    if (refused := _refused(request)) is not None:
        return refused
    RELEASED.clear()

    async def events() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        try:
            await asyncio.wait_for(RELEASED.wait(), 5)
            yield b"data: released\n\n"
        except TimeoutError:
            yield b"data: not released\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def release(request: Request) -> Response:
    if (refused := _refused(request)) is not None:
        return refused
    RELEASED.set()
    return PlainTextResponse("released")


async def status(request: Request) -> Response:
    if (refused := _refused(request)) is not None:
        return refused
    code = int(request.path_params["code"])
    return PlainTextResponse(
        f"status {code} from the sidecar", status_code=code, headers={"x-sidecar": "yes"}
    )


async def delegate(request: Request) -> Response:
    if (refused := _refused(request)) is not None:
        return refused
    token = request.headers.get("x-gateway-delegation", "")
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(
            GATEWAY + "/v1/chat/completions",
            content=await request.body(),
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        )
    return Response(answer.content, status_code=answer.status_code, media_type="application/json")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[
        Route("/api/echo/{path:path}", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/api/upload", upload, methods=["POST", "PUT"]),
        Route("/api/sse", sse, methods=["GET"]),
        Route("/api/gated", gated, methods=["GET"]),
        Route("/api/release", release, methods=["POST"]),
        Route("/api/status/{code:int}", status, methods=["GET"]),
        Route("/api/delegate", delegate, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
