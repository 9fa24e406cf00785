"""Guard test helpers: hook call bodies, answers, a loopback fake gateway, the guard app over ASGI, the
guard as a process. The fixtures live here, not in a conftest.py: a second module named ``conftest`` would
shadow tests/conftest.py for every ``from conftest import ...`` in the suite."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from plugins.guard.app import build
from plugins.guard.hooks import Guard
from plugins.sdk import PluginSettings

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "plugin-token-guard"
DELEGATION = "gwd1.payload.signature"


def call_body(
    hook: str,
    messages: list[dict[str, Any]],
    *,
    config: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    request_id: str = "req-1",
    **request: Any,
) -> dict[str, Any]:
    """A hook call as the gateway sends it (DESIGN.md "Sidecar plugin protocol (v1)")."""
    body: dict[str, Any] = {
        "protocol": 1,
        "hook": hook,
        "request_id": request_id,
        "endpoint": "/v1/chat/completions",
        "tenant": "acme",
        "key_id": "acme-1",
        "role": "user",
        "route": "support",
        "config": config or {},
        "request": {"model": "gpt-4o-mini", "messages": messages, **request},
        "delegation": {"token": DELEGATION, "expires_at": time.time() + 30},
        "deadline": time.time() + 30,
    }
    if response is not None:
        body["response"] = response
    return body


def completion(content: str | None, **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


@dataclass
class FakeGateway:
    """The gateway's /v1/chat/completions on loopback: answers from a queue, records every call."""

    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    calls: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)
    hook_app: ASGIApp | None = None
    """When set, the guard app whose post hook runs on each answer, as the gateway's route would."""
    nested: list[dict[str, Any]] = field(default_factory=list)
    """What that post hook answered."""

    def app(self) -> Starlette:
        async def chat(request: Request) -> JSONResponse:
            bearer = request.headers.get("authorization")
            body = await request.json()
            self.calls.append((bearer, body))
            status, answer = self.answers.pop(0)
            if self.hook_app is not None and status == 200:
                await self._post_hook(str(bearer).removeprefix("Bearer "), body, answer)
            return JSONResponse(answer, status_code=status)

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])

    async def _post_hook(self, token: str, request: dict[str, Any], answer: dict[str, Any]) -> None:
        assert self.hook_app is not None
        call = call_body("post", request["messages"], response=answer, request_id="req-nested")
        call["request"] = request
        call["delegation"]["token"] = token
        transport = httpx.ASGITransport(self.hook_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://guard") as client:
            r = await client.post("/hooks/post", json=call, headers={"authorization": f"Bearer {TOKEN}"})
        self.nested.append(r.json())


@dataclass
class GuardApp:
    client: httpx.AsyncClient
    guard: Guard
    app: ASGIApp

    async def hook(self, body: dict[str, Any]) -> httpx.Response:
        return await self.client.post(
            f"/hooks/{body['hook']}", json=body, headers={"authorization": f"Bearer {TOKEN}"}
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: ASGIApp) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class GuardProcess:
    """`python -m plugins.guard serve` as a real process on a loopback port."""

    def __init__(self, env: dict[str, str], *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "plugins.guard", "serve", "--port", str(self.port), *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> GuardProcess:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"guard exited: {self.proc.stdout.read().decode() if self.proc.stdout else ''}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("guard did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture(name="fake_gateway")
def fake_gateway_fixture() -> Iterator[tuple[FakeGateway, str]]:
    fake = FakeGateway()
    server = LoopbackServer(fake.app()).start()
    try:
        yield fake, server.url
    finally:
        server.stop()


@pytest.fixture(name="guard_app")
async def guard_app_fixture(fake_gateway: tuple[FakeGateway, str]) -> AsyncIterator[GuardApp]:
    settings = PluginSettings(token=TOKEN, gateway_url=fake_gateway[1], data_dir=None, redis_url=None)
    app, guard = build(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://guard") as client:
        yield GuardApp(client, guard, app)
    await guard.aclose()
