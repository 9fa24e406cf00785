"""A configurable plugin sidecar for tests, run as a real process on loopback.

One process serves any number of plugins: plugin ``name`` lives under ``/p/{name}`` (so its routes.yaml
``url`` is ``http://127.0.0.1:{port}/p/{name}`` and its hooks are ``POST /p/{name}/hooks/{hook}``).
A test sets each (plugin, hook)'s behaviour with ``POST /_control/{name}/{hook}``:
``{answer: {...}, delay_s: 0.5, status: 500, raw: "not json"}`` (default: ``{action: continue}``), and
reads every call received, in order, from ``GET /_calls`` (``POST /_reset`` forgets both).

    python tests/plugin_sidecar.py --port N
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BEHAVIOUR: dict[tuple[str, str], dict[str, Any]] = {}
CALLS: list[dict[str, Any]] = []


async def hook(request: Request) -> Response:
    name, point = request.path_params["name"], request.path_params["hook"]
    body = await request.json()
    CALLS.append(
        {"plugin": name, "hook": point, "body": body, "authorization": request.headers.get("authorization")}
    )
    behaviour = BEHAVIOUR.get((name, point), {})
    if behaviour.get("delay_s"):
        await asyncio.sleep(float(behaviour["delay_s"]))
    if "raw" in behaviour:
        return Response(str(behaviour["raw"]), status_code=int(behaviour.get("status", 200)))
    answer = behaviour.get("answer", {"action": "continue"})
    return JSONResponse(answer, status_code=int(behaviour.get("status", 200)))


async def control(request: Request) -> Response:
    BEHAVIOUR[(request.path_params["name"], request.path_params["hook"])] = await request.json()
    return JSONResponse({"ok": True})


async def calls(request: Request) -> Response:
    return JSONResponse(CALLS)


async def reset(request: Request) -> Response:
    BEHAVIOUR.clear()
    CALLS.clear()
    return JSONResponse({"ok": True})


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/p/{name}/hooks/{hook}", hook, methods=["POST"]),
        Route("/_control/{name}/{hook}", control, methods=["POST"]),
        Route("/_calls", calls, methods=["GET"]),
        Route("/_reset", reset, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)


class Sidecar:
    """The sidecar as a subprocess, driven over HTTP from the test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sidecar:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__)), "--port", str(self.port)])
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("sidecar did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def plugin_url(self, name: str) -> str:
        return f"{self.url}/p/{name}"

    def set(self, plugin: str, hook: str, **behaviour: Any) -> None:
        httpx.post(f"{self.url}/_control/{plugin}/{hook}", json=behaviour).raise_for_status()

    def calls(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = httpx.get(self.url + "/_calls").json()
        return found

    def reset(self) -> None:
        httpx.post(self.url + "/_reset").raise_for_status()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
