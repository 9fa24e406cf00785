"""gateway.tools.policy: which tools a (tenant, role) sees and may call, approval and limits."""

from __future__ import annotations

import yaml

from gateway.config.model import RoutesConfig, ToolLimits
from gateway.config.parse import parse_routes
from gateway.tools import policy

CONFIG = """
providers: {p: {type: mock}}
models: {m: {provider: p}}
mcp_servers:
  crm: {url: 'http://crm', tenants: [acme], allowed_tools: [lookup, 'search_*', delete, export]}
  web: {url: 'http://web'}
  closed: {url: 'http://closed', tenants: []}
tool_policy:
  defaults: {max_tool_calls: 5, max_wall_s: 60, max_cost_usd: 0.5}
  tools:
    crm__*: {risk: high}
    crm__delete: {roles: [admin], require_approval: always, approver: reviewer}
    crm__search_*: {roles: [user, admin]}
    '*__export': {require_approval: always}
"""


def config() -> RoutesConfig:
    cfg, _ = parse_routes(yaml.safe_load(CONFIG), environ={})
    return cfg


def test_split_and_qualified() -> None:
    assert policy.split("crm__lookup") == ("crm", "lookup")
    assert policy.split("crm__a__b") == ("crm", "a__b")  # server names hold no "__": the first one splits
    assert [policy.split(n) for n in ("crm", "crm__", "__x", "")] == [None] * 4
    assert policy.qualified("crm", "lookup") == "crm__lookup"


def test_servers_per_tenant() -> None:
    cfg = config()
    assert [s.name for s in policy.servers_for(cfg, "acme")] == ["crm", "web"]
    assert [s.name for s in policy.servers_for(cfg, "globex")] == ["web"]
    assert policy.server_for(cfg, "globex", "crm") is None  # exists, but not for globex
    assert policy.server_for(cfg, "acme", "closed") is None  # tenants: [] is nobody


def test_rule_lookup_exact_then_most_specific_glob() -> None:
    rules = config().tool_policy
    assert policy.rule_for(rules, "crm__delete").pattern == "crm__delete"
    assert policy.rule_for(rules, "crm__search_x").pattern == "crm__search_*"
    assert policy.rule_for(rules, "crm__lookup").pattern == "crm__*"
    assert policy.rule_for(rules, "crm__export").pattern == "*__export"  # longer than crm__*
    assert policy.rule_for(rules, "web__fetch") is policy.DEFAULT_RULE


def test_decide_each_refusal() -> None:
    cfg = config()
    ok = policy.decide(cfg, "acme", "user", "crm__lookup")
    assert ok.allowed and ok.risk == "high" and not ok.needs_approval()
    assert ok.server is not None and (ok.server.name, ok.tool) == ("crm", "lookup")
    other = policy.decide(cfg, "globex", "admin", "crm__lookup")
    assert (other.refusal, other.message) == (
        "unknown_tool",
        "Unknown tool 'crm__lookup': no MCP server 'crm'.",
    )
    assert policy.decide(cfg, "acme", "user", "nosuch__x").refusal == "unknown_tool"
    assert policy.decide(cfg, "acme", "user", "lookup").refusal == "unknown_tool"
    assert policy.decide(cfg, "acme", "user", "crm__drop").refusal == "tool_not_allowed"
    denied = policy.decide(cfg, "acme", "user", "crm__delete")
    assert (denied.refusal, denied.message) == (
        "role_not_allowed",
        "Tool 'crm__delete' is not allowed for role 'user'.",
    )
    assert policy.decide(cfg, "acme", "reviewer", "crm__search_a").refusal == "role_not_allowed"
    assert policy.decide(cfg, "acme", "admin", "crm__delete").allowed


def test_visible_matches_decide() -> None:
    cfg = config()
    crm, web = cfg.mcp_servers["crm"], cfg.mcp_servers["web"]
    for tenant in ("acme", "globex"):
        for role in ("user", "admin", "reviewer"):
            for server, tool in [
                (crm, "lookup"),
                (crm, "delete"),
                (crm, "drop"),
                (crm, "search_q"),
                (web, "x"),
            ]:
                name = policy.qualified(server.name, tool)
                assert (
                    policy.visible(cfg, tenant, role, server, tool)
                    == policy.decide(cfg, tenant, role, name).allowed
                ), (tenant, role, name)


def test_approval_cannot_be_lowered_by_a_request() -> None:
    cfg = config()
    delete = policy.decide(cfg, "acme", "admin", "crm__delete")
    assert delete.needs_approval(requested=False) and delete.needs_approval(requested=True)
    assert delete.approver == "reviewer"
    export = policy.decide(cfg, "acme", "user", "crm__export")
    assert export.needs_approval(False) and export.approver == "client"
    lookup = policy.decide(cfg, "acme", "user", "crm__lookup")
    assert not lookup.needs_approval(False) and lookup.needs_approval(True)  # a request may add approval


def test_limits_a_request_may_lower_never_raise() -> None:
    rules = config().tool_policy
    assert policy.limits(rules) == ToolLimits(5, 60.0, 0.5)
    assert policy.limits(rules, max_tool_calls=2) == ToolLimits(2, 60.0, 0.5)
    assert policy.limits(rules, max_tool_calls=50) == ToolLimits(5, 60.0, 0.5)
    assert policy.limits(rules, max_tool_calls=0).max_tool_calls == 0
