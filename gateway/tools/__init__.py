"""Tools over MCP (DESIGN.md "tools (MCP)"): the configured upstream MCP servers (``servers``), who may
use which tool (``policy``), the audit of every call (``audit``), and the ``/mcp`` endpoint (``endpoint``).

Nothing here is imported by the chat path: a deployment without ``mcp_servers`` never loads the MCP SDK.
"""
