"""A minimal stand-in gateway: Starlette + httpx pass-through with bearer-key checking.

It answers the same ``serve`` command line as the real gateway, so the harness can be validated
(``python -m bench.run --gateway-module bench.standin``) before the gateway runs, and it gives a
floor to compare against: what a bare Python proxy on the same stack costs per request.
It reads only the first provider's ``base_url`` from routes.yaml and the key hashes from budgets.yaml.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


def _unauthorized() -> JSONResponse:
    err = {"message": "bad key", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    return JSONResponse({"error": err}, status_code=401)


def build_app(routes_path: Path, budgets_path: Path) -> Starlette:
    routes: dict[str, Any] = yaml.safe_load(routes_path.read_text())
    budgets: dict[str, Any] = yaml.safe_load(budgets_path.read_text())
    provider = next(iter(routes["providers"].values()))
    base_url = str(provider["base_url"]).rstrip("/")
    upstream_key = str(provider.get("api_key", ""))
    hashes = {k["sha256"] for t in budgets["tenants"].values() for k in t.get("keys", [])}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0) as client:
            app.state.client = client
            yield

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def chat(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        secret = auth[7:] if auth[:7].lower() == "bearer " else ""
        if hashlib.sha256(secret.encode()).hexdigest() not in hashes:
            return _unauthorized()
        client: httpx.AsyncClient = request.app.state.client
        upstream = client.build_request(
            "POST",
            "/chat/completions",
            content=await request.body(),
            headers={"authorization": f"Bearer {upstream_key}", "content-type": "application/json"},
        )
        response = await client.send(upstream, stream=True)
        content_type = response.headers.get("content-type", "application/json")
        headers = {"content-type": content_type}
        if not content_type.startswith("text/event-stream"):
            body = await response.aread()
            await response.aclose()
            return Response(body, status_code=response.status_code, headers=headers)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers=headers,
            background=BackgroundTask(response.aclose),
        )

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/v1/chat/completions", chat, methods=["POST"])],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.standin")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--routes", type=Path, default=Path("routes.yaml"))
    serve.add_argument("--budgets", type=Path, default=Path("budgets.yaml"))
    serve.add_argument("--workers", type=int, default=1, help="accepted for compatibility; one process")
    args = parser.parse_args(argv)
    app = build_app(args.routes, args.budgets)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
