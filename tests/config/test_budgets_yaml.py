"""budgets.yaml rules: tenants, budgets, limits, allow-lists and keys."""

from __future__ import annotations

from config_snippets import (
    BAD_SHA,
    DESIGN_BUDGETS,
    DESIGN_ROUTES,
    NAME_RULE,
    SHA_A,
    SHA_B,
    budgets_errors,
    key,
    load,
    routes_ok,
    tenant,
)

from gateway.config.parse import parse_budgets

# -- budgets.yaml ---------------------------------------------------------------------------------------


def test_design_example_budgets_parse() -> None:
    routes, _ = routes_ok(DESIGN_ROUTES, {})
    config, warnings = parse_budgets(load(DESIGN_BUDGETS), routes=routes, environ={})
    assert warnings == []
    acme = config.tenants["acme"]
    assert acme.budget is not None and (acme.budget.usd, acme.budget.period) == (500.0, "monthly")
    assert (acme.limits.rpm, acme.limits.tpm) == (600, 200000)
    assert acme.models == ("gpt-4o-mini", "claude-*")
    k = acme.keys[0]
    assert (k.id, k.tenant, k.sha256, k.role) == ("acme-backend", "acme", SHA_A, "user")
    assert k.budget is not None and (k.budget.usd, k.budget.period) == (50.0, "daily")
    assert (k.limits.rpm, k.limits.tpm) == (60, None)
    assert config.keys_by_hash() == {SHA_A: k}


class TestBudgets:
    def test_defaults(self) -> None:
        config, _ = parse_budgets(load(key(f"{{id: k, sha256: {SHA_A}}}")), routes=None, environ={})
        acme = config.tenants["acme"]
        assert (acme.budget, acme.models, acme.limits.rpm) == (None, None, None)
        assert (acme.keys[0].role, acme.keys[0].budget) == ("user", None)

    def test_role_message(self) -> None:
        assert budgets_errors(key(f"{{id: k, sha256: {SHA_A}, role: root}}")) == [
            "budgets.yaml: tenants.acme.keys[0].role: must be one of user, admin, reviewer"
        ]

    def test_budget_rules(self) -> None:
        assert budgets_errors(tenant("{budget: {usd: -1, period: yearly}}")) == [
            "budgets.yaml: tenants.acme.budget.usd: must be between 0 and 1000000",
            "budgets.yaml: tenants.acme.budget.period: must be one of daily, weekly, monthly, total",
        ]
        # nano-USD must stay exact in the store's Lua (2**53): 1e308 would fail every request
        assert budgets_errors(tenant("{budget: {usd: 1.0e+308, period: daily}}")) == [
            "budgets.yaml: tenants.acme.budget.usd: must be between 0 and 1000000"
        ]
        assert budgets_errors(
            key(f"{{id: k, sha256: {SHA_A}, budget: {{usd: 2000000, period: daily}}}}")
        ) == ["budgets.yaml: tenants.acme.keys[0].budget.usd: must be between 0 and 1000000"]
        assert budgets_errors(tenant("{budget: {usd: true}}")) == [
            "budgets.yaml: tenants.acme.budget.period: is required",
            "budgets.yaml: tenants.acme.budget.usd: must be a number",
        ]

    def test_tenant_and_key_ids_are_capped_at_128_characters(self) -> None:
        long_id = "k" * 129
        assert budgets_errors(key(f"{{id: {long_id}, sha256: {SHA_A}}}")) == [
            "budgets.yaml: tenants.acme.keys[0].id: key id is 129 characters long; the most is 128"
        ]
        ok = "k" * 128
        config, _ = parse_budgets(load(key(f"{{id: {ok}, sha256: {SHA_A}}}")), routes=None, environ={})
        assert config.tenants["acme"].keys[0].id == ok

    def test_limits_are_positive_integers(self) -> None:
        assert budgets_errors(tenant("{limits: {rpm: 0, tpm: 1.5, rps: 1}}")) == [
            "budgets.yaml: tenants.acme.limits: unknown field 'rps' (did you mean 'rpm'?)",
            "budgets.yaml: tenants.acme.limits.rpm: must be >= 1",
            "budgets.yaml: tenants.acme.limits.tpm: must be an integer",
        ]

    def test_key_limits_and_budget(self) -> None:
        config, _ = parse_budgets(
            load(
                key(f"{{id: k, sha256: {SHA_A}, limits: {{tpm: 10}}, budget: {{usd: 1.5, period: total}}}}")
            ),
            routes=None,
            environ={},
        )
        k = config.tenants["acme"].keys[0]
        assert k.limits.tpm == 10 and k.budget is not None and k.budget.usd == 1.5

    def test_sha256_rules(self) -> None:
        assert budgets_errors(key("{id: k, sha256: abc}")) == [
            f"budgets.yaml: tenants.acme.keys[0].sha256: {BAD_SHA}"
        ]
        assert budgets_errors(key("{id: k}")) == ["budgets.yaml: tenants.acme.keys[0].sha256: is required"]
        assert budgets_errors(key("{id: k, sha256: " + "g" * 64 + "}"))[0].endswith("(64 hex characters)")

    def test_uppercase_sha256_is_normalised(self) -> None:
        config, _ = parse_budgets(load(key(f"{{id: k, sha256: {SHA_A.upper()}}}")), routes=None, environ={})
        assert config.tenants["acme"].keys[0].sha256 == SHA_A

    def test_key_id_required_and_unique_across_tenants(self) -> None:
        text = f"""
        tenants:
          acme:
            keys:
              - {{id: shared, sha256: {SHA_A}}}
              - {{sha256: {SHA_B}}}
          globex:
            keys:
              - {{id: shared, sha256: {SHA_B.upper()}}}
        """
        assert budgets_errors(text) == [
            "budgets.yaml: tenants.acme.keys[1].id: is required",
            "budgets.yaml: tenants.globex.keys[0].id: duplicate key id 'shared'",
            "budgets.yaml: tenants.globex.keys[0].sha256: "
            "duplicate sha256: same secret as tenants.acme.keys[1]",
        ]

    def test_same_secret_twice(self) -> None:
        text = f"""
        tenants:
          a: {{keys: [{{id: k1, sha256: {SHA_A}}}]}}
          b: {{keys: [{{id: k2, sha256: {SHA_A}}}]}}
        """
        assert budgets_errors(text) == [
            "budgets.yaml: tenants.b.keys[0].sha256: duplicate sha256: same secret as key 'k1'"
        ]

    def test_names_become_labels_so_their_characters_are_limited(self) -> None:
        text = (
            f"tenants:\n  'acme corp': {{keys: [{{id: 'k/1', sha256: {SHA_A}}}, {{id: 7, sha256: {SHA_B}}}]}}"
        )
        assert budgets_errors(text) == [
            f"budgets.yaml: tenants: invalid tenant name 'acme corp': {NAME_RULE}",
            f"budgets.yaml: tenants[\"acme corp\"].keys[0].id: invalid key id 'k/1': {NAME_RULE}",
            'budgets.yaml: tenants["acme corp"].keys[1].id: key id 7 must be a string',
        ]

    def test_unknown_fields_and_structure(self) -> None:
        assert budgets_errors("tenant: {}") == [
            "budgets.yaml: <root>: unknown field 'tenant' (did you mean 'tenants'?)",
            "budgets.yaml: tenants: is required",
        ]
        assert budgets_errors(tenant("{budgets: {}, keys: {id: k}}")) == [
            "budgets.yaml: tenants.acme: unknown field 'budgets' (did you mean 'budget'?)",
            "budgets.yaml: tenants.acme.keys: must be a list",
        ]
        assert budgets_errors(key(f"{{id: k, sha256: {SHA_A}, rolle: admin}}")) == [
            "budgets.yaml: tenants.acme.keys[0]: unknown field 'rolle' (did you mean 'role'?)"
        ]

    def test_empty_tenants_is_valid(self) -> None:
        assert parse_budgets(load("tenants: {}"), routes=None, environ={})[0].tenants == {}

    def test_model_globs_checked_against_routes(self) -> None:
        routes, _ = routes_ok(DESIGN_ROUTES, {})
        config, warnings = parse_budgets(
            load(tenant("{models: ['gpt-*', 'gemini-*', echo]}")), routes=routes, environ={}
        )
        assert config.tenants["acme"].models == ("gpt-*", "gemini-*", "echo")
        assert warnings == [
            "budgets.yaml: tenants.acme.models[1]: 'gemini-*' matches no model defined in the routes file"
        ]
        # Without routes (routes.yaml broken) nothing can be matched, so nothing is warned.
        assert parse_budgets(load(tenant("{models: ['gemini-*']}")), routes=None, environ={})[1] == []

    def test_model_globs_must_be_strings_and_empty_list_allows_nothing(self) -> None:
        assert budgets_errors(tenant("{models: [1, '']}")) == [
            "budgets.yaml: tenants.acme.models[0]: must be a string",
            "budgets.yaml: tenants.acme.models[1]: must not be empty",
        ]
        config, _ = parse_budgets(load(tenant("{models: []}")), routes=None, environ={})
        assert config.tenants["acme"].models == ()


class TestKeyModelsAndExpiry:
    """DESIGN.md: a key may carry its own ``models`` (inside the tenant's allow-list) and ``expires_at``."""

    def test_parsed(self) -> None:
        routes, _ = routes_ok(DESIGN_ROUTES, {})
        text = (
            "tenants:\n  acme:\n    models: ['gpt-4o-mini', 'claude-*']\n    keys:\n"
            f"      - {{id: k, sha256: {SHA_A}, models: ['claude-*'], expires_at: '2027-06-30T00:00:00Z'}}\n"
            f"      - {{id: j, sha256: {SHA_B}, expires_at: 2027-06-30}}\n"
        )
        config, warnings = parse_budgets(load(text), routes=routes, environ={})
        assert warnings == []
        k, j = config.tenants["acme"].keys
        assert k.models == ("claude-*",)
        assert k.expires_at == j.expires_at == 1_814_313_600.0  # 2027-06-30T00:00:00Z
        assert config.tenants["acme"].keys[0].role == "user"

    def test_a_keys_models_must_be_inside_its_tenants(self) -> None:
        routes, _ = routes_ok(DESIGN_ROUTES, {})
        text = (
            "tenants:\n  acme:\n    models: ['claude-*']\n    keys:\n"
            f"      - {{id: k, sha256: {SHA_A}, models: ['gpt-4o-mini', 'claude-*', 'nope-*']}}\n"
        )
        assert budgets_errors(text, routes) == [
            "budgets.yaml: tenants.acme.keys[0].models[0]: 'gpt-4o-mini' matches no model the tenant's "
            "allow-list permits",
            "budgets.yaml: tenants.acme.keys[0].models[2]: 'nope-*' matches no model the tenant's "
            "allow-list permits",
        ]

    def test_expires_at_must_be_a_time(self) -> None:
        assert budgets_errors(key(f"{{id: k, sha256: {SHA_A}, expires_at: next tuesday}}")) == [
            "budgets.yaml: tenants.acme.keys[0].expires_at: must be an ISO 8601 time such as "
            "'2027-06-30T00:00:00Z'"
        ]
