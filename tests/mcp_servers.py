"""Real MCP servers on loopback for the tool tests, built with the official SDK's server API.

``ToolServer`` serves, over Streamable HTTP at ``/mcp``, a handful of tools that each exercise one path:

* ``echo(text)``: returns the text;
* ``count(key)``: counts its executions per key (``server.counts``): the at-most-once tests' witness;
* ``slow(seconds)``: sleeps, then answers (timeouts);
* ``fail(message)``: a tool error (``is_error: true`` result);
* ``explode()``: raises, so the server answers with a JSON-RPC error;
* ``big(size)``: a text result of ``size`` bytes (default 5 MB: truncation);
* ``headers()``: the request headers it received, as JSON (which credentials reached it);
* ``region(region)``: an argument annotated ``x-mcp-header``: a call without the matching ``Mcp-Param-Region``
  header is refused by the SDK before it runs (``HEADER_MISMATCH``); answers the header it got.

With ``token`` set, a request without ``Authorization: Bearer <token>`` gets 401, as a real server behind
credentials would. ``tools`` narrows the list (two servers with different tools, for the tenant tests).
The server runs in a thread of the test process (uvicorn), so ``counts`` is read directly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Collection
from typing import Any

import mcp_types as types
import orjson
import uvicorn
from conftest import free_port
from mcp.server.lowlevel.server import Server
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

BIG_DEFAULT = 5_000_000

_SCHEMAS: dict[str, tuple[str, dict[str, Any]]] = {
    "echo": (
        "Echo the text back.",
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    ),
    "count": (
        "Count executions per key.",
        {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
    ),
    "slow": ("Sleep, then answer.", {"type": "object", "properties": {"seconds": {"type": "number"}}}),
    "fail": ("Always a tool error.", {"type": "object", "properties": {"message": {"type": "string"}}}),
    "explode": ("Raise inside the server.", {"type": "object", "properties": {}}),
    "big": ("A large text result.", {"type": "object", "properties": {"size": {"type": "integer"}}}),
    "headers": ("The request headers this server received.", {"type": "object", "properties": {}}),
    "region": (
        "An argument the 2026 protocol mirrors into an Mcp-Param-Region header.",
        {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}},
    ),
}


class ToolServer:
    def __init__(
        self,
        *,
        name: str = "test-tools",
        token: str | None = None,
        tools: Collection[str] | None = None,
        json_response: bool = False,
    ) -> None:
        self.token = token
        self.tool_names = tuple(tools if tools is not None else _SCHEMAS)
        self.counts: Counter[str] = Counter()
        """Executions of ``count`` per key (each also counted under ``"*"``)."""
        self.calls: Counter[str] = Counter()
        """Executions of every tool by name."""
        self.list_calls = 0
        self.requests = 0
        """HTTP requests received, refused ones included."""
        self._lock = threading.Lock()
        server: Server[Any] = Server(name, on_list_tools=self._list, on_call_tool=self._call)
        inner = server.streamable_http_app(
            json_response=json_response,
            # Tests reach it as 127.0.0.1:<port>, which the SDK's DNS-rebinding guard allows anyway.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.port = free_port()
        config = uvicorn.Config(
            self._guard(inner), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> ToolServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("MCP test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ToolServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the ASGI edge: the bearer check ---------------------------------------------------------------

    def _guard(self, inner: Any) -> Any:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                self.requests += 1
            if scope["type"] == "http" and self.token is not None:
                headers = dict(scope["headers"])
                if headers.get(b"authorization") != f"Bearer {self.token}".encode():
                    await send({"type": "http.response.start", "status": 401, "headers": []})
                    await send({"type": "http.response.body", "body": b"unauthorized"})
                    return
            await inner(scope, receive, send)

        return app

    # -- MCP handlers ----------------------------------------------------------------------------------

    async def _list(self, ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        with self._lock:
            self.list_calls += 1
        return types.ListToolsResult(
            tools=[
                types.Tool(name=name, description=_SCHEMAS[name][0], input_schema=_SCHEMAS[name][1])
                for name in self.tool_names
            ]
        )

    async def _call(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        name, args = params.name, dict(params.arguments or {})
        if name not in self.tool_names:
            raise ValueError(f"unknown tool {name!r}")
        with self._lock:
            self.calls[name] += 1
        if name == "echo":
            return _text(str(args.get("text", "")))
        if name == "count":
            key = str(args.get("key", ""))
            with self._lock:
                self.counts[key] += 1
                self.counts["*"] += 1
                n = self.counts[key]
            return _text(str(n))
        if name == "slow":
            await asyncio.sleep(float(args.get("seconds", 5)))
            return _text("done")
        if name == "fail":
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=str(args.get("message", "it failed")))],
                is_error=True,
            )
        if name == "explode":
            raise RuntimeError("the tool server exploded")
        if name == "big":
            return _text("x" * int(args.get("size", BIG_DEFAULT)))
        request = getattr(ctx, "request", None)
        seen = dict(request.headers) if request is not None else {}
        if name == "region":
            return _text(seen.get("mcp-param-region", ""))
        return _text(orjson.dumps(seen).decode())


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])
