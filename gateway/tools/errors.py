"""The tool errors, in the gateway's tree (gateway/errors.py)::

    GatewayError
    ├── ClientError
    │   ├── BadRequest
    │   │   └── UnknownTool           400 unknown_tool: no such server__tool for this tenant
    │   └── PermissionDenied
    │       └── ToolNotAllowed        403 tool_not_allowed / role_not_allowed / approval_required
    └── ServerError
        ├── UpstreamUnavailable
        │   └── ToolServerUnavailable 502 mcp_server_unavailable: unreachable, refused, or no MCP
        └── DeadlineExceeded
            └── ToolServerTimeout     504 mcp_server_timeout

A *call* that fails upstream (timeout, unreachable, the server's own error) is not raised: it becomes an
error result (``gateway.tools.servers.ToolResult``), because a model reads a tool's failure as its answer.
Listing a server's tools raises, since there is no answer to hand anyone. The messages never quote what
an upstream said about its credentials.
"""

from __future__ import annotations

from gateway.errors import BadRequest, DeadlineExceeded, PermissionDenied, UpstreamUnavailable
from gateway.tools.policy import Decision


class UnknownTool(BadRequest):
    code = "unknown_tool"


class ToolNotAllowed(PermissionDenied):
    code = "tool_not_allowed"


class ToolServerUnavailable(UpstreamUnavailable):
    code = "mcp_server_unavailable"


class ToolServerTimeout(DeadlineExceeded):
    code = "mcp_server_timeout"


def refusal_error(decision: Decision, *, param: str | None = None) -> UnknownTool | ToolNotAllowed:
    """The error of a refused ``policy.decide``; ``param`` names the request field at fault."""
    if decision.refusal == "unknown_tool":
        return UnknownTool(decision.message, param=param)
    return ToolNotAllowed(decision.message, param=param, code=decision.refusal)
