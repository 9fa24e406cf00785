"""The MCP server behind ``/mcp``: the tools of every upstream server the caller's tenant may use, under
one name space (``server__tool``), each call checked against the policy, audited, and run on the upstream
server with the gateway's credentials for it.

Built with the SDK's low-level ``Server``; the caller (authenticated by ``gateway.tools.endpoint``) rides on
the HTTP request the SDK hands each handler (``ctx.request.state.mcp_caller``).

Refusals are JSON-RPC errors, as MCP asks for a call that cannot be made (the spec's ``-32602`` for an
unknown tool; ``-32001`` for a call the policy refuses, with the reason in ``data.code``). A call that was
made but failed upstream (timeout, unreachable, the server's own error) is an error *result*
(``isError: true``), which is what a model, or a human, can read and act on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError

from gateway.config.model import McpServerConfig, RoutesConfig
from gateway.ledger import Ledger
from gateway.pipeline.auth import Principal
from gateway.tools import audit, policy
from gateway.tools.hub import ToolHub

log = logging.getLogger("gateway.tools")

NOT_ALLOWED = -32001
"""JSON-RPC error code of a call the policy refuses (``data.code`` says why)."""


@dataclass(frozen=True, slots=True)
class McpCaller:
    """Who is calling ``/mcp``, under which config version, for which request id."""

    principal: Principal
    routes: RoutesConfig
    request_id: str
    ledger: Ledger | None


def build_server(hub: ToolHub) -> Server[Any]:
    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        caller = _caller(ctx)
        tenant, role = caller.principal.tenant, caller.principal.role
        servers = policy.servers_for(caller.routes, tenant)
        listings = await asyncio.gather(*(_listing(hub, s) for s in servers))
        tools = [
            tool.model_copy(update={"name": policy.qualified(server.name, tool.name)})
            for server, listing in zip(servers, listings, strict=True)
            for tool in listing
            if policy.visible(caller.routes, tenant, role, server, tool.name)
        ]
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        caller = _caller(ctx)
        principal = caller.principal
        arguments = dict(params.arguments or {})
        started = time.perf_counter()

        def record(outcome: str) -> None:
            audit.record(
                caller.ledger,
                request_id=caller.request_id,
                principal=principal,
                tool=params.name,
                arguments=arguments,
                outcome=outcome,
                duration_s=time.perf_counter() - started,
                via="mcp",
            )

        decision = policy.decide(caller.routes, principal.tenant, principal.role, params.name)
        if not decision.allowed:
            record(decision.refusal or "unknown_tool")
            code = types.INVALID_PARAMS if decision.refusal == "unknown_tool" else NOT_ALLOWED
            raise MCPError(code, decision.message, {"code": decision.refusal})
        if decision.needs_approval():
            # /mcp has no approval flow (no response to hold, no client to ask): the call is refused.
            record("approval_required")
            message = (
                f"Tool {params.name!r} requires approval (tool_policy require_approval: always); "
                "call it through /v1/responses, where the approval can be given."
            )
            raise MCPError(NOT_ALLOWED, message, {"code": "approval_required"})
        assert decision.server is not None
        try:
            result = await hub.servers().client(decision.server).call_tool(decision.tool, arguments)
        except asyncio.CancelledError:  # the caller went away: the call may have run, so it is on record
            record("cancelled")
            raise
        record(result.outcome)
        return result.result

    return Server(
        "llm-gateway",
        instructions="Tools of the MCP servers this gateway key may use, named server__tool.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def _listing(hub: ToolHub, server: McpServerConfig) -> tuple[types.Tool, ...]:
    """One server's tools; a server that cannot answer is left out of the listing (logged), so one broken
    server does not hide every other one's tools."""
    try:
        return await hub.servers().client(server).list_tools()
    except Exception as exc:  # ToolServerUnavailable/Timeout (already mapped), or a bug: never the list
        log.warning("MCP server %r left out of /mcp tools/list: %s", server.name, exc)
        return ()


def _caller(ctx: Any) -> McpCaller:
    request = getattr(ctx, "request", None)
    caller = getattr(getattr(request, "state", None), "mcp_caller", None)
    if not isinstance(caller, McpCaller):  # every request is authenticated before the SDK sees it
        raise MCPError(types.INTERNAL_ERROR, "The gateway lost track of who is calling.")
    return caller
