"""Which of a server's tools the model is offered, and what a call to each needs.

A tool is offered when the tool policy shows it to the caller (``gateway.tools.policy.visible``: the
server's tenants and ``allowed_tools``, the rule's ``roles``) and the request's ``allowed_tools`` names it
(if given). Its approval: the rule's ``require_approval: always`` (a request cannot lower it; the rule's
``approver`` answers), else the request's own ``require_approval`` (the client answers); else none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config.model import McpServerConfig, Role, RoutesConfig
from gateway.hosted import items
from gateway.hosted.backend import ToolInfo
from gateway.hosted.spec import HostedTool
from gateway.tools.policy import qualified, rule_for, visible


@dataclass(frozen=True, slots=True)
class Offer:
    """One tool offered to the model, and what its calls need."""

    server: McpServerConfig
    label: str
    tool: ToolInfo
    approval: str | None
    """None: runs at once; ``client``: an ``mcp_approval_request``; ``reviewer``: the ``tool`` hook."""

    def function(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": items.function_name(self.label, self.tool.name),
                "description": self.tool.description or "",
                "parameters": self.tool.input_schema or {"type": "object", "properties": {}},
            },
        }


Offers = Callable[[HostedTool, McpServerConfig, list[ToolInfo]], list[Offer]]
"""The offers of one listed server (``offers_for`` with the caller and the config bound)."""


def offers_for(
    config: RoutesConfig,
    tenant: str,
    role: Role,
    hosted: HostedTool,
    server: McpServerConfig,
    tools: list[ToolInfo],
) -> list[Offer]:
    out = []
    for tool in tools:
        if hosted.allowed is not None and tool.name not in hosted.allowed:
            continue
        if not visible(config, tenant, role, server, tool.name):
            continue
        rule = rule_for(config.tool_policy, qualified(server.name, tool.name))
        approval: str | None = None
        if rule.require_approval == "always":
            approval = rule.approver
        elif hosted.asks_approval(tool.name):
            approval = "client"
        out.append(Offer(server, hosted.label, tool, approval))
    return out
