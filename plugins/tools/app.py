"""The tools sidecar's app: an MCP server (the official SDK's low-level ``Server``, Streamable HTTP at
``/mcp``) serving the registry's HTTP endpoints as tools, ``GET /healthz``, and the plugin token on
everything else.

Stateless with JSON answers, like the gateway's own ``/mcp``: nothing lives between requests, so any number
of replicas can sit behind one URL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
from mcp.server.lowlevel.server import Server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from plugins.sdk import PluginSettings
from plugins.sdk.app import RequireToken
from plugins.tools.call import call
from plugins.tools.registry import HttpTool, load

DEFAULT_PORT = 8104
REGISTRY_ENV = "TOOLS_REGISTRY"
DEFAULT_REGISTRY = Path(__file__).with_name("tools.yaml")


def registry_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get(REGISTRY_ENV) or DEFAULT_REGISTRY)


def build(
    settings: PluginSettings,
    tools: tuple[HttpTool, ...] | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ASGIApp:
    """The app; ``tools`` default to the registry at ``$TOOLS_REGISTRY`` (else the shipped tools.yaml),
    loaded now so a broken file stops the start with every error listed."""
    registry = {t.name: t for t in (tools if tools is not None else load(registry_path()))}
    client = httpx.AsyncClient(transport=transport, follow_redirects=False)

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[_describe(t) for t in registry.values()])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = registry.get(params.name)
        if tool is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool {params.name!r}.")
        return await call(client, tool, params.arguments or {})

    server: Server[Any] = Server("tools", on_list_tools=list_tools, on_call_tool=call_tool)
    mcp = server.streamable_http_app(
        stateless_http=True,
        json_response=True,
        # The plugin token guards every call; DNS-rebinding checks (for unauthenticated local servers)
        # would refuse the Host names a cluster uses.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        custom_starlette_routes=[Route("/healthz", _healthz, methods=["GET"])],
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield
        await client.aclose()

    app = Starlette(routes=list(mcp.routes), lifespan=lifespan)
    return RequireToken(app, settings.token) if settings.token else app


def _describe(tool: HttpTool) -> types.Tool:
    return types.Tool(
        name=tool.name,
        description=tool.description or None,
        input_schema=dict(tool.input_schema),
        annotations=types.ToolAnnotations(
            read_only_hint=tool.method == "GET",
            idempotent_hint=tool.idempotent,
            destructive_hint=None if tool.method == "GET" else tool.method == "DELETE",
        ),
    )


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})
