"""routes.yaml ``mcp_servers:`` and ``tool_policy:`` (DESIGN.md "tools (MCP)"): every field, its default,
and each error with its path; ``check`` and hot reload see them like any other section."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_snippets import routes_errors, routes_ok, with_minimal

from gateway.config.model import MIB, McpServerConfig, ToolLimits, ToolPolicy, ToolRule
from gateway.config.parse import check


def servers_errors(body: str) -> list[str]:
    return routes_errors(with_minimal(f"mcp_servers:\n  crm: {body}\n"))


class TestMcpServers:
    def test_absent_means_none(self) -> None:
        config, _ = routes_ok(with_minimal(""))
        assert config.mcp_servers == {}
        assert config.tool_policy == ToolPolicy()

    def test_defaults(self) -> None:
        config, warnings = routes_ok(with_minimal("mcp_servers: {crm: {url: 'http://127.0.0.1:9/mcp/'}}"))
        assert warnings == []
        assert config.mcp_servers["crm"] == McpServerConfig(
            name="crm", url="http://127.0.0.1:9/mcp", headers={}, tenants=None, allowed_tools=None
        )
        server = config.mcp_servers["crm"]
        assert (server.timeout_s, server.max_result_bytes) == (30.0, MIB)

    def test_every_field_and_env_headers(self) -> None:
        config, _ = routes_ok(
            with_minimal(
                """
                mcp_servers:
                  crm:
                    url: https://crm.internal/mcp
                    headers: {Authorization: "Bearer ${CRM_TOKEN}", X-Org: acme}
                    tenants: [acme, beta]
                    allowed_tools: [lookup, 'search_*']
                    timeout_s: 2.5
                    max_result_bytes: 65536
                """
            ),
            environ={"CRM_TOKEN": "s3cret"},
        )
        server = config.mcp_servers["crm"]
        assert server.headers == {"Authorization": "Bearer s3cret", "X-Org": "acme"}
        assert type(server.headers["Authorization"]) is str  # not the EnvStr marker
        assert (server.tenants, server.allowed_tools) == (("acme", "beta"), ("lookup", "search_*"))
        assert (server.timeout_s, server.max_result_bytes) == (2.5, 65536)

    def test_empty_lists_mean_nobody_not_everybody(self) -> None:
        config, _ = routes_ok(
            with_minimal("mcp_servers: {crm: {url: 'http://h', tenants: [], allowed_tools: []}}")
        )
        assert (config.mcp_servers["crm"].tenants, config.mcp_servers["crm"].allowed_tools) == ((), ())

    def test_unset_env_header_is_a_warning(self) -> None:
        _, warnings = routes_ok(
            with_minimal("mcp_servers: {crm: {url: 'http://h', headers: {Authorization: 'Bearer ${NOPE}'}}}")
        )
        assert warnings == [
            "routes.yaml: mcp_servers.crm.headers.Authorization: environment variable NOPE is not set"
        ]

    @pytest.mark.parametrize(
        ("name", "path"),
        [("bad__name", ".bad__name"), ("9lives", ".9lives"), ("with-dash", ".with-dash"), ("a.b", '["a.b"]')],
    )
    def test_server_names_are_identifiers_without_the_separator(self, name: str, path: str) -> None:
        assert routes_errors(with_minimal(f"mcp_servers: {{'{name}': {{url: 'http://h'}}}}")) == [
            f"routes.yaml: mcp_servers{path}: invalid server name {name!r}: "
            "use a Python identifier without '__'"
        ]

    def test_field_errors(self) -> None:
        assert servers_errors(
            "{headers: [a], tenants: acme, timeout_s: 0, max_result_bytes: 10, urll: x}"
        ) == [
            "routes.yaml: mcp_servers.crm: unknown field 'urll' (did you mean 'url'?)",
            "routes.yaml: mcp_servers.crm.url: is required",
            "routes.yaml: mcp_servers.crm.headers: must be a mapping",
            "routes.yaml: mcp_servers.crm.tenants: must be a list",
            "routes.yaml: mcp_servers.crm.timeout_s: must be > 0",
            "routes.yaml: mcp_servers.crm.max_result_bytes: must be >= 1024",
        ]
        assert servers_errors("{url: 'ws://h', headers: {X-N: 1}, allowed_tools: [lookup, '', 3]}") == [
            "routes.yaml: mcp_servers.crm.url: must start with http:// or https://",
            "routes.yaml: mcp_servers.crm.headers.X-N: must be a string",
            "routes.yaml: mcp_servers.crm.allowed_tools[1]: must not be empty",
            "routes.yaml: mcp_servers.crm.allowed_tools[2]: must be a string",
        ]
        assert servers_errors("[a]") == ["routes.yaml: mcp_servers.crm: must be a mapping"]
        assert routes_errors(with_minimal("mcp_servers: [crm]")) == [
            "routes.yaml: mcp_servers: must be a mapping"
        ]

    def test_numbers_from_the_environment(self) -> None:
        config, _ = routes_ok(
            with_minimal(
                "mcp_servers: {crm: {url: 'http://h', timeout_s: '${T}', max_result_bytes: '${M}'}}"
            ),
            environ={"T": "4", "M": "2048"},
        )
        assert (config.mcp_servers["crm"].timeout_s, config.mcp_servers["crm"].max_result_bytes) == (
            4.0,
            2048,
        )


POLICY = """
mcp_servers:
  crm: {url: 'http://h'}
  web: {url: 'http://w'}
tool_policy:
"""


def policy_ok(body: str) -> tuple[ToolPolicy, list[str]]:
    config, warnings = routes_ok(with_minimal(POLICY + body))
    return config.tool_policy, warnings


def policy_errors(body: str) -> list[str]:
    return routes_errors(with_minimal(POLICY + body))


class TestToolPolicy:
    def test_defaults_section(self) -> None:
        policy, _ = policy_ok("  defaults: {}\n")
        assert policy.defaults == ToolLimits(max_tool_calls=20, max_wall_s=300.0, max_cost_usd=None)
        policy, _ = policy_ok("  defaults: {max_tool_calls: 3, max_wall_s: 1.5, max_cost_usd: 0.25}\n")
        assert policy.defaults == ToolLimits(3, 1.5, 0.25)
        assert policy_errors(
            "  defaults: {max_tool_calls: 0, max_wall_s: -1, max_cost_usd: 0, calls: 2}\n"
        ) == [
            "routes.yaml: tool_policy.defaults: unknown field 'calls'",
            "routes.yaml: tool_policy.defaults.max_tool_calls: must be >= 1",
            "routes.yaml: tool_policy.defaults.max_wall_s: must be > 0",
            "routes.yaml: tool_policy.defaults.max_cost_usd: must be > 0",
        ]
        policy, _ = policy_ok("  defaults: {max_cost_usd: null}\n")
        assert policy.defaults.max_cost_usd is None

    def test_rules_fields_and_defaults(self) -> None:
        policy, warnings = policy_ok(
            """
              tools:
                crm__lookup: {}
                crm__delete: {risk: high, roles: [admin], require_approval: always, approver: reviewer}
            """.replace("\n  ", "\n")
        )
        assert warnings == []
        assert policy.tools == (
            ToolRule("crm__lookup"),
            ToolRule("crm__delete", "high", ("admin",), "always", "reviewer"),
        )
        assert ToolRule("x__y") == ToolRule("x__y", "low", None, "never", "client")

    def test_exact_names_first_then_the_longest_glob(self) -> None:
        policy, _ = policy_ok(
            "  tools:\n    '*__*': {risk: high}\n    crm__s*: {}\n    crm__*: {}\n    crm__lookup: {}\n"
        )
        assert [r.pattern for r in policy.tools] == ["crm__lookup", "crm__s*", "crm__*", "*__*"]

    def test_rule_errors(self) -> None:
        assert policy_errors(
            """
              tools:
                lookup: {}
                __x: {}
                crm__: {}
                crm__a: {risk: medium, roles: [user, root], require_approval: true, approver: boss, when: x}
                crm__b: [admin]
            """.replace("\n  ", "\n")
        ) == [
            "routes.yaml: tool_policy.tools.lookup: must be 'server__tool' (or a glob: 'crm__*')",
            "routes.yaml: tool_policy.tools.__x: must be 'server__tool' (or a glob: 'crm__*')",
            "routes.yaml: tool_policy.tools.crm__: must be 'server__tool' (or a glob: 'crm__*')",
            "routes.yaml: tool_policy.tools.crm__a: unknown field 'when'",
            "routes.yaml: tool_policy.tools.crm__a.risk: must be one of low, high",
            "routes.yaml: tool_policy.tools.crm__a.roles[1]: must be one of user, admin, reviewer",
            "routes.yaml: tool_policy.tools.crm__a.require_approval: must be one of never, always",
            "routes.yaml: tool_policy.tools.crm__a.approver: must be one of client, reviewer",
            "routes.yaml: tool_policy.tools.crm__b: must be a mapping",
        ]
        assert policy_errors("  tools: [crm__a]\n") == ["routes.yaml: tool_policy.tools: must be a mapping"]
        assert policy_errors("  tool: {}\n") == [
            "routes.yaml: tool_policy: unknown field 'tool' (did you mean 'tools'?)"
        ]

    def test_warnings_for_rules_that_cannot_apply(self) -> None:
        _, warnings = policy_ok("  tools:\n    crn__lookup: {}\n    crm__x: {approver: reviewer}\n")
        assert warnings == [
            "routes.yaml: tool_policy.tools.crn__lookup: matches no server in mcp_servers (crm, web)",
            "routes.yaml: tool_policy.tools.crm__x.approver: has no effect without require_approval: always",
        ]
        _, warnings = policy_ok("  tools:\n    '*__lookup': {}\n    'c?m__x': {}\n")
        assert warnings == []


def test_check_reports_the_new_sections(tmp_path: Path) -> None:
    """``python -m gateway check`` (``gateway.config.parse.check``) validates them with the file's name."""
    routes = tmp_path / "routes.yaml"
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("tenants: {}\n")
    routes.write_text(with_minimal("mcp_servers: {crm: {url: 'http://h', timeout_s: 0}}\n"))
    errors, _ = check(routes, budgets, environ={})
    assert errors == ["routes.yaml: mcp_servers.crm.timeout_s: must be > 0"]
    routes.write_text(
        with_minimal("mcp_servers: {crm: {url: 'http://h'}}\ntool_policy: {tools: {crm__a: {}}}\n")
    )
    assert check(routes, budgets, environ={}) == ([], [])


def test_check_warns_about_a_server_tenant_budgets_yaml_does_not_have(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("tenants: {acme: {}}\n")
    routes.write_text(with_minimal("mcp_servers: {crm: {url: 'http://h', tenants: [acme, acmee]}}\n"))
    assert check(routes, budgets, environ={}) == (
        [],
        [
            "budgets.yaml: tenants: the routes file's mcp_servers.crm.tenants names 'acmee',"
            " which is not a tenant here"
        ],
    )
