"""The hosted loop's ``Servers`` over the gateway's MCP clients (``gateway.tools.servers``, reached through
the app's ``ToolHub``, shared with ``/mcp``): MCP's types in, the loop's small ones out, every failure of a
call turned into an ``mcp_call`` error."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.config.model import McpServerConfig
from gateway.hosted import items
from gateway.hosted.backend import CallResult, ToolInfo

if TYPE_CHECKING:
    from gateway.tools.hub import ToolHub

_CODES = {"timeout": 504, "unreachable": 502, "error": 500}


class McpBackend:
    def __init__(self, hub: ToolHub) -> None:
        self._hub = hub  # the MCP SDK is imported by the first call, not at start

    async def list_tools(self, server: McpServerConfig) -> list[ToolInfo]:
        tools = await self._hub.servers().client(server).list_tools()
        return [
            ToolInfo(
                t.name,
                t.description,
                t.input_schema,
                t.annotations.model_dump(exclude_none=True) if t.annotations is not None else None,
            )
            for t in tools
        ]

    async def call_tool(self, server: McpServerConfig, tool: str, arguments: dict[str, Any]) -> CallResult:
        result = await self._hub.servers().client(server).call_tool(tool, arguments)
        if not result.is_error:
            return CallResult(result.text)
        if result.outcome == "tool_error":  # the tool ran and said it failed
            return CallResult(None, items.execution_error(result.text), "tool_error")
        code = _CODES.get(result.outcome, 500)
        return CallResult(None, items.protocol_error(code, result.text), result.outcome)
