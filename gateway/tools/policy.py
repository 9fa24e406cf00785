"""Who may see and call which tool, and under which limits: pure functions of the config (DESIGN.md
"tools (MCP)").

A tool is named ``server__tool`` outside the gateway. A caller (tenant, role) may use a tool when

1. the server lists the tenant in ``tenants`` (or has no ``tenants``: every tenant),
2. the tool is inside the server's ``allowed_tools`` (or it has none: every tool),
3. the ``tool_policy`` rule for the name (exact name first, then the most specific glob) lists the role
   in ``roles`` (or has no ``roles``, or there is no rule: every role).

A server the tenant may not use is reported exactly like one that does not exist, so a caller learns
nothing about other tenants' servers. Approval: the rule's ``require_approval: always`` holds whatever
the request asks; a request may only add approval (``requested=True``), never remove it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

from gateway.config.model import (
    TOOL_SEPARATOR,
    Approver,
    McpServerConfig,
    Role,
    RoutesConfig,
    ToolLimits,
    ToolPolicy,
    ToolRisk,
    ToolRule,
)

DEFAULT_RULE = ToolRule(pattern="*")
"""The rule of a tool no ``tool_policy.tools`` entry matches: low risk, every role, no approval."""

Refusal = Literal["unknown_tool", "tool_not_allowed", "role_not_allowed"]
"""``unknown_tool``: no such server (for this tenant) or a malformed name; ``tool_not_allowed``: outside
the server's ``allowed_tools``; ``role_not_allowed``: the policy's ``roles`` leave the caller's out."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a caller may call one ``server__tool``, and what the policy says about it."""

    name: str
    server: McpServerConfig | None
    tool: str
    rule: ToolRule
    refusal: Refusal | None = None
    message: str = ""

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    @property
    def risk(self) -> ToolRisk:
        return self.rule.risk

    @property
    def approver(self) -> Approver:
        return self.rule.approver

    def needs_approval(self, requested: bool = False) -> bool:
        """``requested``: the request asked for approval of this call (OpenAI's ``require_approval``)."""
        return requested or self.rule.require_approval == "always"


def qualified(server: str, tool: str) -> str:
    return f"{server}{TOOL_SEPARATOR}{tool}"


def split(name: str) -> tuple[str, str] | None:
    """``crm__lookup`` → ``("crm", "lookup")``; None when it is not a ``server__tool`` name. Server names
    hold no ``__`` (the config refuses them), so the first ``__`` is the separator even when the tool's
    own name has one."""
    server, sep, tool = name.partition(TOOL_SEPARATOR)
    return (server, tool) if sep and server and tool else None


def rule_for(policy: ToolPolicy, name: str) -> ToolRule:
    """The rule for ``server__tool``: the rules are kept exact names first, then globs from the most
    specific, so the first match wins."""
    for rule in policy.tools:
        if rule.pattern == name or fnmatch.fnmatchcase(name, rule.pattern):
            return rule
    return DEFAULT_RULE


def servers_for(config: RoutesConfig, tenant: str) -> list[McpServerConfig]:
    """The servers ``tenant`` may use, in config order."""
    return [s for s in config.mcp_servers.values() if s.tenants is None or tenant in s.tenants]


def server_for(config: RoutesConfig, tenant: str, name: str) -> McpServerConfig | None:
    """The server called ``name`` if ``tenant`` may use it (None also when it does not exist)."""
    server = config.mcp_servers.get(name)
    if server is None or (server.tenants is not None and tenant not in server.tenants):
        return None
    return server


def tool_allowed(server: McpServerConfig, tool: str) -> bool:
    """Whether the server's ``allowed_tools`` admit ``tool`` (its own name, without the prefix)."""
    allowed = server.allowed_tools
    return allowed is None or any(fnmatch.fnmatchcase(tool, pattern) for pattern in allowed)


def role_allowed(rule: ToolRule, role: Role) -> bool:
    return rule.roles is None or role in rule.roles


def decide(config: RoutesConfig, tenant: str, role: Role, name: str) -> Decision:
    """May (tenant, role) call ``name`` (``server__tool``)? The refusal says why not."""
    parts = split(name)
    if parts is None:
        return Decision(
            name, None, "", DEFAULT_RULE, "unknown_tool", f"Unknown tool {name!r}: names are 'server__tool'."
        )
    server_name, tool = parts
    server = server_for(config, tenant, server_name)
    rule = rule_for(config.tool_policy, name)
    if server is None:
        return Decision(
            name, None, tool, rule, "unknown_tool", f"Unknown tool {name!r}: no MCP server {server_name!r}."
        )
    if not tool_allowed(server, tool):
        message = f"Tool {name!r} is not in the allowed_tools of MCP server {server_name!r}."
        return Decision(name, server, tool, rule, "tool_not_allowed", message)
    if not role_allowed(rule, role):
        message = f"Tool {name!r} is not allowed for role {role!r}."
        return Decision(name, server, tool, rule, "role_not_allowed", message)
    return Decision(name, server, tool, rule)


def visible(config: RoutesConfig, tenant: str, role: Role, server: McpServerConfig, tool: str) -> bool:
    """Whether a tool a server listed is shown to (tenant, role): the same test as ``decide``."""
    return (
        (server.tenants is None or tenant in server.tenants)
        and tool_allowed(server, tool)
        and role_allowed(rule_for(config.tool_policy, qualified(server.name, tool)), role)
    )


def limits(policy: ToolPolicy, *, max_tool_calls: int | None = None) -> ToolLimits:
    """The limits of one tool loop: the policy's, with a request's own ``max_tool_calls`` able to lower
    (never raise) the number of calls."""
    base = policy.defaults
    if max_tool_calls is None or max_tool_calls >= base.max_tool_calls:
        return base
    return ToolLimits(max(0, max_tool_calls), base.max_wall_s, base.max_cost_usd)
