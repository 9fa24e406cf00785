"""Shared fixtures: a live gateway on loopback (uvicorn in a thread) in front of test upstreams."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from redis_server import RedisServer
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.server import GatewayHttpProtocol
from gateway.settings import Settings

KEY_ACME = "sk-test-acme"
KEY_GLOBEX = "sk-test-globex"


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


BUDGETS = f"""
tenants:
  acme:
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
  globex:
    models: ["mock-*"]
    keys:
      - {{id: globex-1, sha256: "{sha(KEY_GLOBEX)}", role: user}}
"""

ROUTES = """
providers:
  up: {type: openai, base_url: "http://upstream.test/v1", api_key: sk-upstream-secret}
  local: {type: mock}
models:
  gpt-4o-mini: {provider: up, price: {input_per_mtok: 0.15, output_per_mtok: 0.60}}
  mock-chat: {provider: local, price: {input_per_mtok: 1, output_per_mtok: 2}}
  text-embedding-3-small: {provider: up, price: {input_per_mtok: 0.02, output_per_mtok: 0}}
routes:
  - name: alias
    match: {model: "gpt-4o"}
    targets: [{model: gpt-4o-mini}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: ASGIApp, http: type[asyncio.Protocol] | str = GatewayHttpProtocol) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            http=http,  # GatewayHttpProtocol: as `gateway serve` runs it; "httptools": the ASGI path
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
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


@dataclass
class Gateway:
    server: LiveServer
    routes_path: Path
    budgets_path: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    @property
    def app(self) -> ASGIApp:
        return self.server.server.config.app


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    started: list[LiveServer] = []

    def make(
        routes: str = ROUTES,
        budgets: str = BUDGETS,
        transport: httpx.AsyncBaseTransport | None = None,
        reload_interval_s: float = 0.2,
        http: type[asyncio.Protocol] | str = GatewayHttpProtocol,
        **settings: Any,  # more Settings fields, e.g. the connection limits
    ) -> Gateway:
        routes_path = tmp_path / "routes.yaml"
        budgets_path = tmp_path / "budgets.yaml"
        routes_path.write_text(routes)
        budgets_path.write_text(budgets)
        settings = Settings(
            routes_path=str(routes_path),
            budgets_path=str(budgets_path),
            reload_interval_s=reload_interval_s,
            **settings,
        )
        server = LiveServer(create_app(settings, transport=transport), http).start()
        started.append(server)
        return Gateway(server, routes_path, budgets_path)

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A throwaway redis-server for one test (tests/store has a session-wide one of the same name)."""
    server = RedisServer().start()
    yield server.url
    server.stop()
