"""What the gateway's ``/mcp`` adds to a tool call (issue 19).

``python -m bench.mcp`` starts an MCP server with one ``echo`` tool (the SDK's low-level server, its default
Streamable HTTP transport) and one gateway process with it as ``mcp_servers.up``. The official MCP client
then makes ``--calls`` sequential ``tools/call`` requests, alternating rounds of: straight to the server,
and through the gateway's ``/mcp`` (one client session each, so the client's own handshake is not counted).
It prints the p50/p99 latency of each path, the paired difference, and the gateway's CPU per call.

The gateway's path per call: key check, policy decision, audit line, a fresh upstream client session
(adopted protocol version, no handshake) and the upstream round trip, the result bound.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import ChildProcess, cpu_seconds, free_port, python_module

KEY = "sk-bench-mcp"


def serve_upstream(port: int) -> None:
    import mcp_types as types
    import uvicorn
    from mcp.server.lowlevel.server import Server
    from mcp.server.transport_security import TransportSecuritySettings

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {"text": {"type": "string"}}}
        return types.ListToolsResult(tools=[types.Tool(name="echo", input_schema=schema)])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        text = str((params.arguments or {}).get("text", ""))
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server: Server[Any] = Server("bench", on_list_tools=list_tools, on_call_tool=call_tool)
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(transport_security=security)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def _timed_calls(url: str, headers: dict[str, str], n: int) -> list[float]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    out: list[float] = []
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        tools = (await client.list_tools()).tools
        name = tools[0].name
        for i in range(n):
            start = time.perf_counter()
            result = await client.call_tool(name, {"text": f"hello {i}"})
            out.append(time.perf_counter() - start)
            assert not result.is_error, result
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mcp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="tool calls per round and path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "upstream"])
    parser.add_argument("--port", type=int, default=0, help="(upstream) the port to serve on")
    args = parser.parse_args(argv)
    if args.command == "upstream":
        serve_upstream(args.port)
        return 0
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        up_port, gw_port = free_port(), free_port()
        (work / "routes.yaml").write_text(
            "providers: {local: {type: mock}}\nmodels: {m: {provider: local}}\n"
            f"mcp_servers: {{up: {{url: 'http://127.0.0.1:{up_port}/mcp'}}}}\n"
        )
        digest = hashlib.sha256(KEY.encode()).hexdigest()
        (work / "budgets.yaml").write_text(f'tenants: {{bench: {{keys: [{{id: k, sha256: "{digest}"}}]}}}}\n')
        env = {"GATEWAY_LEDGER_URL": "off", "GATEWAY_STATE_FILE": "", "GATEWAY_LOG_LEVEL": "warning"}
        env = {**os.environ, **env, "PYTHONPATH": str(root)}
        upstream = ChildProcess(
            "upstream",
            python_module("bench.mcp", "upstream", "--port", str(up_port)),
            work / "up.log",
            root,
            env,
        )
        serve = ["serve", "--port", str(gw_port), "--routes", str(work / "routes.yaml")]
        gateway = ChildProcess(
            "gateway",
            python_module("gateway", *serve, "--budgets", str(work / "budgets.yaml")),
            work / "gw.log",
            root,
            env,
        )
        with upstream, gateway:
            gateway.wait_healthy(gw_port, 30)
            upstream.wait_until(lambda: _listening(up_port), 30)
            direct_url = f"http://127.0.0.1:{up_port}/mcp"
            via_url = f"http://127.0.0.1:{gw_port}/mcp"
            auth = {"Authorization": f"Bearer {KEY}"}
            asyncio.run(_timed_calls(via_url, auth, 20))  # warm-up: the lazy /mcp start, the SDK imports
            direct: list[float] = []
            via: list[float] = []
            diffs: list[float] = []
            cpu_ms: list[float] = []
            for _ in range(args.rounds):
                d = asyncio.run(_timed_calls(direct_url, {}, args.calls))
                before = cpu_seconds(gateway.pid)
                v = asyncio.run(_timed_calls(via_url, auth, args.calls))
                cpu_ms.append((cpu_seconds(gateway.pid) - before) * 1000 / args.calls)
                direct += d
                via += v
                diffs.append((statistics.median(v) - statistics.median(d)) * 1000)
            print(f"tool calls: {args.rounds} rounds x {args.calls} per path, concurrency 1")
            for label, values in (("direct to the MCP server", direct), ("through the gateway /mcp", via)):
                print(f"  {label} : p50 {_pct(values, 0.5):.2f} ms  p99 {_pct(values, 0.99):.2f} ms")
            print(f"  added by the gateway     : p50 {statistics.median(diffs):.2f} ms (median of rounds)")
            print(f"  gateway CPU per call     : {statistics.median(cpu_ms):.2f} ms")
    return 0


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    sys.exit(main())
