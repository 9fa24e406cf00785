"""What the tool features hold for the app's lifetime, created on first use.

The app creates one ``ToolHub`` at start (``app.state.tools``); it imports nothing of the MCP SDK until a
tool is first used, so start-up and the chat path do not pay for a feature a deployment may not use (the
SDK's import alone is about half a second). ``/mcp`` and the hosted tool loop of ``/v1/responses`` share
its ``servers()``: one connection pool, protocol version and tool listing per upstream server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.tools.servers import McpServers


class ToolHub:
    def __init__(self) -> None:
        self._servers: McpServers | None = None

    def servers(self) -> McpServers:
        if self._servers is None:
            from gateway.tools.servers import McpServers  # the MCP SDK's import, on first use only

            self._servers = McpServers()
        return self._servers

    async def aclose(self) -> None:
        if self._servers is not None:
            await self._servers.aclose()
