"""routes.yaml ``mcp_servers:`` and ``tool_policy:`` → frozen config, checked with paths (DESIGN.md
"tools (MCP)")."""

from __future__ import annotations

import fnmatch

from gateway.config._validate import Checker, index_path, key_path
from gateway.config.model import (
    MIB,
    ROLES,
    TOOL_SEPARATOR,
    Approval,
    Approver,
    McpServerConfig,
    Role,
    ToolLimits,
    ToolPolicy,
    ToolRisk,
    ToolRule,
)

_SERVER_FIELDS = ("url", "headers", "tenants", "allowed_tools", "timeout_s", "max_result_bytes")
_RULE_FIELDS = ("risk", "roles", "require_approval", "approver")
_LIMIT_FIELDS = ("max_tool_calls", "max_wall_s", "max_cost_usd")
_RISKS: tuple[ToolRisk, ...] = ("low", "high")
_APPROVALS: tuple[Approval, ...] = ("never", "always")
_APPROVERS: tuple[Approver, ...] = ("client", "reviewer")
_MIN_RESULT_BYTES = 1024  # a limit below a kilobyte cuts every real answer: surely a slip


def mcp_servers(value: object, c: Checker) -> dict[str, McpServerConfig]:
    out: dict[str, McpServerConfig] = {}
    for name, entry in c.named(value, "mcp_servers").items():
        path = key_path("mcp_servers", name)
        if not name.isidentifier() or TOOL_SEPARATOR in name:
            # The name is the prefix of every tool it lends (`crm__lookup`): a `__` inside it would make
            # the split ambiguous, and clients (and models) expect identifier-like tool names.
            c.error(path, f"invalid server name {name!r}: use a Python identifier without '__'")
            continue
        d = c.record(entry, path, _SERVER_FIELDS, required=("url",))
        if d is None:
            continue
        url = c.url(d, path, "url")  # first: errors read in the order fields are usually written
        headers: dict[str, str] = {}
        for key, item in c.named(d.get("headers"), key_path(path, "headers")).items():
            text = c.as_text(item, key_path(key_path(path, "headers"), key))
            if text is not None:
                headers[key] = text
        out[name] = McpServerConfig(
            name=name,
            url=url,
            headers=headers,
            tenants=_names_or_all(d, path, "tenants", c),
            allowed_tools=_names_or_all(d, path, "allowed_tools", c),
            timeout_s=c.number(d, path, "timeout_s", 30.0, gt=0),
            max_result_bytes=c.integer(d, path, "max_result_bytes", MIB, ge=_MIN_RESULT_BYTES),
        )
    return out


def _names_or_all(d: dict[str, object], path: str, key: str, c: Checker) -> tuple[str, ...] | None:
    """A list of names; absent means "all" (None), while an empty list means none at all."""
    if key not in d:
        return None
    return c.names(d[key], key_path(path, key))


def tool_policy(value: object, servers: dict[str, McpServerConfig], c: Checker) -> ToolPolicy:
    if value is None:
        return ToolPolicy()
    d = c.record(value, "tool_policy", ("defaults", "tools"))
    if d is None:
        return ToolPolicy()
    rules = [
        rule
        for pattern, entry in c.named(d.get("tools"), "tool_policy.tools").items()
        if (rule := _rule(pattern, entry, servers, c)) is not None
    ]
    return ToolPolicy(defaults=_limits(d.get("defaults"), c), tools=order(rules))


def order(rules: list[ToolRule]) -> tuple[ToolRule, ...]:
    """Exact names first, then globs from the most specific (longest) down; ties keep file order."""
    exact = [r for r in rules if not _is_glob(r.pattern)]
    globs = sorted((r for r in rules if _is_glob(r.pattern)), key=lambda r: -len(r.pattern))
    return (*exact, *globs)


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _limits(value: object, c: Checker) -> ToolLimits:
    base = ToolLimits()
    if value is None:
        return base
    path = "tool_policy.defaults"
    d = c.record(value, path, _LIMIT_FIELDS)
    if d is None:
        return base
    return ToolLimits(
        max_tool_calls=c.integer(d, path, "max_tool_calls", base.max_tool_calls, ge=1),
        max_wall_s=c.number(d, path, "max_wall_s", base.max_wall_s, gt=0),
        max_cost_usd=c.opt_number(d, path, "max_cost_usd", gt=0),
    )


def _rule(pattern: str, value: object, servers: dict[str, McpServerConfig], c: Checker) -> ToolRule | None:
    path = key_path("tool_policy.tools", pattern)
    server, sep, tool = pattern.partition(TOOL_SEPARATOR)
    if not sep or not server or not tool:
        c.error(path, "must be 'server__tool' (or a glob: 'crm__*')")
        return None
    if not any(fnmatch.fnmatchcase(name, server) for name in servers):
        # Most likely a typo in the server name: the rule would silently never apply.
        c.warn(path, f"matches no server in mcp_servers ({', '.join(servers) or 'none configured'})")
    d = c.record({} if value is None else value, path, _RULE_FIELDS)
    if d is None:
        return None
    rule = ToolRule(
        pattern=pattern,
        risk=c.choice(d, path, "risk", _RISKS, "low"),
        roles=_roles(d, path, c),
        require_approval=c.choice(d, path, "require_approval", _APPROVALS, "never"),
        approver=c.choice(d, path, "approver", _APPROVERS, "client"),
    )
    if "approver" in d and rule.require_approval == "never":
        c.warn(key_path(path, "approver"), "has no effect without require_approval: always")
    return rule


def _roles(d: dict[str, object], path: str, c: Checker) -> tuple[Role, ...] | None:
    if "roles" not in d:
        return None
    out: list[Role] = []
    for i, name in enumerate(c.names(d["roles"], key_path(path, "roles"))):
        if name in ROLES:
            out.append(ROLES[ROLES.index(name)])
        else:
            c.error(index_path(key_path(path, "roles"), i), "must be one of " + ", ".join(ROLES))
    return tuple(out)
