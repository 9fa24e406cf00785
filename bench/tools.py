"""The hosted tool loop's own overhead per step (issue 19's speed point).

``python -m bench.tools [--rounds 7] [--requests 40]`` starts, in this process, a gateway (uvicorn, the
gateway's own HTTP protocol, no Redis) whose model is the built-in mock with latency 0, and a trivial MCP
server on loopback (one ``echo`` tool, the official SDK's server). Each round times, one request at a time:

* **hosted**: ``POST /v1/responses`` with ``{type: mcp}``: the gateway lists the tools (cached), the model
  calls ``echo``, the gateway runs it and asks the model again, which answers (2 model steps, 1 tool call);
* **direct**: what a client does by hand for the same result: a ``/v1/chat/completions`` that returns the
  tool call, the MCP call from the client (the gateway's own MCP client code, fresh adopted session per
  call, as the loop uses), and a second ``/v1/chat/completions`` with the result.

The difference (hosted − direct, paired round by round, median) is what the loop costs beyond the same
work done by hand. Inside the gateway, the hosted requests are also timed apart: the loop's whole time
(``gateway.hosted.run.respond``) less the model's (the mock provider's ``send``) and the tool's (the MCP
call) is the gateway's own time, per response and per model step: each step's delegated request through
the pipeline (token, admission, settlement, log line), the items and events, the idempotency claim and
record, schema validation, the audit row and storing the response. Everything shares one process, so
absolute numbers are higher than a dedicated gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import uvicorn
from mcp.server.lowlevel.server import Server
from mcp.server.transport_security import TransportSecuritySettings

from bench.procs import free_port
from gateway.app import create_app
from gateway.config.model import McpServerConfig
from gateway.server import GatewayHttpProtocol
from gateway.settings import Settings
from gateway.tools.servers import ServerClient

KEY = "sk-bench-tools"
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def _serve(app: Any, **kw: Any) -> tuple[uvicorn.Server, int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **kw))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("a bench server did not start")
        time.sleep(0.01)
    return server, port


def mcp_app() -> Any:
    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[types.Tool(name="echo", description="Echo.", input_schema=SCHEMA)]
        )

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        text = str((params.arguments or {}).get("text", ""))
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server: Server[Any] = Server("bench-tools", on_list_tools=list_tools, on_call_tool=call_tool)
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return server.streamable_http_app(transport_security=security)


def gateway_app(tmp: Path, mcp_url: str) -> Any:
    routes = tmp / "routes.yaml"
    budgets = tmp / "budgets.yaml"
    routes.write_text(
        "providers:\n  local: {type: mock, latency_ms: 0}\n"
        "models:\n  mock-chat: {provider: local, price: {input_per_mtok: 1, output_per_mtok: 2}}\n"
        "routes: []\n"
        f"mcp_servers:\n  kit: {{url: '{mcp_url}'}}\n"
    )
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    budgets.write_text(f'tenants:\n  bench:\n    keys:\n      - {{id: bench-1, sha256: "{digest}"}}\n')
    return create_app(Settings(routes_path=str(routes), budgets_path=str(budgets)))


class Clock:
    """Time spent inside wrapped coroutines, by bucket (the bench's own instrumentation)."""

    def __init__(self) -> None:
        self.spent = {"loop": 0.0, "model": 0.0, "tool": 0.0}

    def wrap(self, owner: Any, name: str, bucket: str) -> None:
        inner = getattr(owner, name)

        async def timed(*args: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return await inner(*args, **kw)
            finally:
                self.spent[bucket] += time.perf_counter() - started

        setattr(owner, name, timed)


def hosted(http: httpx.Client, n: int) -> float:
    tool = {"type": "mcp", "server_label": "kit", "require_approval": "never"}
    started = time.perf_counter()
    for i in range(n):
        body = {"model": "mock-chat", "input": f"echo {i}", "tools": [tool], "store": False}
        answer = http.post("/v1/responses", json=body).json()
        if [o["type"] for o in answer["output"]] != ["mcp_list_tools", "mcp_call", "message"]:
            raise RuntimeError(f"unexpected answer: {answer}")
    return (time.perf_counter() - started) / n


def direct(http: httpx.Client, tool: ServerClient, loop: asyncio.AbstractEventLoop, n: int) -> float:
    function = {"type": "function", "function": {"name": "kit__echo", "parameters": SCHEMA}}
    started = time.perf_counter()
    for i in range(n):
        messages: list[dict[str, Any]] = [{"role": "user", "content": f"echo {i}"}]
        body = {"model": "mock-chat", "messages": messages, "tools": [function]}
        first = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
        call = first["tool_calls"][0]
        args = json.loads(call["function"]["arguments"])
        result = asyncio.run_coroutine_threadsafe(tool.call_tool("echo", args), loop).result()
        messages += [first, {"role": "tool", "tool_call_id": call["id"], "content": result.text}]
        answer = http.post("/v1/chat/completions", json={**body, "messages": messages}).json()
        if not answer["choices"][0]["message"]["content"]:
            raise RuntimeError(f"unexpected answer: {answer}")
    return (time.perf_counter() - started) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tools", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--requests", type=int, default=40, help="requests of each kind per round")
    a = p.parse_args(argv)
    import gateway.hosted.run
    from gateway.hosted.mcp import McpBackend
    from gateway.providers.mock import MockProvider

    clock = Clock()
    clock.wrap(gateway.hosted.run, "respond", "loop")
    clock.wrap(MockProvider, "send", "model")
    clock.wrap(McpBackend, "call_tool", "tool")
    mcp_server, mcp_port = _serve(mcp_app())
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    with tempfile.TemporaryDirectory() as tmp:
        gateway, port = _serve(gateway_app(Path(tmp), mcp_url), http=GatewayHttpProtocol, lifespan="on")
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        tool = ServerClient(McpServerConfig(name="kit", url=mcp_url))
        headers = {"authorization": f"Bearer {KEY}"}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as http:
                hosted(http, 5)  # warm-up: imports, the MCP handshake, the listing cache
                direct(http, tool, loop, 5)
                clock.spent = dict.fromkeys(clock.spent, 0.0)
                pairs = [
                    (hosted(http, a.requests), direct(http, tool, loop, a.requests)) for _ in range(a.rounds)
                ]
                spent = dict(clock.spent)
        finally:
            asyncio.run_coroutine_threadsafe(tool.aclose(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            gateway.should_exit = mcp_server.should_exit = True
    h = statistics.median(x for x, _ in pairs) * 1e3
    d = statistics.median(y for _, y in pairs) * 1e3
    diff = statistics.median(x - y for x, y in pairs) * 1e3
    print(f"hosted loop (2 model steps + 1 tool call): {h:.2f} ms per response (median of {a.rounds} rounds)")
    print(f"direct (2 chat completions + 1 MCP call):  {d:.2f} ms")
    print(f"hosted minus direct: {diff:.2f} ms per response ({diff / 2:.2f} ms per model step)")
    n = a.rounds * a.requests
    own = (spent["loop"] - spent["model"] - spent["tool"]) / n * 1e3
    print(
        f"inside the gateway, per response: loop {spent['loop'] / n * 1e3:.2f} ms, model "
        f"{spent['model'] / n * 1e3:.2f} ms, tool {spent['tool'] / n * 1e3:.2f} ms; the gateway's own "
        f"{own:.2f} ms = {own / 2:.2f} ms per model step"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
