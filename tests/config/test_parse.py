"""Config loading end to end: the shipped examples, routes.yaml's top level, files, YAML errors, check."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from config_snippets import (
    BAD_SHA,
    DESIGN_BUDGETS,
    DESIGN_ROUTES,
    MINIMAL,
    SHA_A,
    key,
    routes_errors,
    routes_ok,
    tenant,
    with_minimal,
)

from gateway.config.parse import ConfigError, check, load_budgets, load_routes
from gateway.providers.registry import PROVIDER_TYPES

TYPES = ", ".join(PROVIDER_TYPES)  # every registered type, in registry order

# -- routes.yaml: the shipped example and the top level -------------------------------------------------


def test_design_example_routes_parse() -> None:
    config, warnings = routes_ok(DESIGN_ROUTES, {"OPENAI_API_KEY": "sk-o"})
    assert warnings == [
        "routes.yaml: providers.anthropic.api_key: environment variable ANTHROPIC_API_KEY is not set"
    ]
    openai = config.providers["openai"]
    assert (openai.type, openai.base_url, openai.api_key) == ("openai", "https://api.openai.com/v1", "sk-o")
    assert config.providers["anthropic"].base_url == "https://api.anthropic.com"
    assert config.providers["local"].options == {"latency_ms": 0.0, "fault": "none", "fault_rate": 1.0}
    assert config.models["claude-haiku"].upstream == "claude-3-5-haiku-latest"
    assert config.models["echo"].upstream == "echo"
    assert config.models["gpt-4o-mini"].price.output_per_mtok == 0.60
    assert config.models["gpt-4o-mini"].context_window == 128000
    assert [r.name for r in config.routes] == ["summarize", "gpt4-to-mini", "acme-premium"]
    first = config.routes[0]
    assert [(t.model, t.weight) for t in first.targets] == [("gpt-4o-mini", 3.0), ("claude-haiku", 1.0)]
    assert first.fallbacks == ("echo",)
    assert first.cache is not None and (first.cache.ttl_s, first.cache.mode) == (3600, "deterministic")
    assert [p.name for p in first.plugins] == ["rag"]
    assert config.routes[2].match.tenant == "acme" and config.routes[2].match.model == "claude-*"
    assert config.defaults.retry.backoff_max_s == 8.0 and config.defaults.breaker.reset_s == 30.0
    assert config.defaults.estimate_margin == 0.10 and config.defaults.store_failure == "closed"
    assert config.plugins["tools"].timeout_s == 30.0 and config.plugins["tools"].on_error == "closed"


def test_minimal_file_gets_defaults() -> None:
    config, warnings = routes_ok(MINIMAL)
    assert warnings == []
    assert config.routes == () and config.plugins == {}
    assert config.defaults.timeout_s == 60.0 and config.defaults.max_body_bytes == 10 * 1024 * 1024


def test_top_level_unknown_field_with_suggestion() -> None:
    assert routes_errors(with_minimal("rutes: []")) == [
        "routes.yaml: <root>: unknown field 'rutes' (did you mean 'routes'?)"
    ]


def test_top_level_must_be_a_mapping_and_has_required_sections() -> None:
    assert routes_errors("[1, 2]") == ["routes.yaml: <root>: must be a mapping"]
    assert routes_errors("") == ["routes.yaml: <root>: must be a mapping"]
    assert routes_errors("routes: []") == [
        "routes.yaml: providers: is required",
        "routes.yaml: models: is required",
    ]


def test_models_must_not_be_empty() -> None:
    assert routes_errors("providers: {p: {type: mock}}\nmodels: {}") == [
        "routes.yaml: models: must define at least one model"
    ]


def test_every_error_is_reported_at_once() -> None:
    errors = routes_errors(
        """
        providers:
          o: {type: openia}
        models:
          a: {provider: nope}
          b: {provider: o, context_window: 0}
        routes:
          - {name: r, targets: [{model: gpt-5}]}
          - {name: r, targets: [{model: a, weight: 0}], fallbacks: [zz]}
        """
    )
    assert errors == [
        f"routes.yaml: providers.o.type: must be one of {TYPES}",
        "routes.yaml: models.a.provider: unknown provider 'nope'",
        "routes.yaml: models.b.context_window: must be >= 1",
        "routes.yaml: routes[0].targets[0].model: unknown model 'gpt-5'",
        "routes.yaml: routes[1].name: duplicate route name 'r'",
        "routes.yaml: routes[1].targets[0].weight: must be > 0",
        "routes.yaml: routes[1].fallbacks[0]: unknown model 'zz'",
    ]


def test_config_error_message_joins_all_errors() -> None:
    exc = ConfigError(["a: b: c", "d: e: f"])
    assert str(exc) == "a: b: c\nd: e: f" and exc.warnings == []


# -- files: load_*, YAML errors, check ------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


class TestFiles:
    def test_load_both(self, tmp_path: Path) -> None:
        routes, _ = load_routes(write(tmp_path, "routes.yaml", DESIGN_ROUTES), environ={})
        budgets, warnings = load_budgets(
            str(write(tmp_path, "budgets.yaml", DESIGN_BUDGETS)), routes, environ={}
        )
        assert budgets.tenants["acme"].keys[0].id == "acme-backend" and warnings == []

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            load_routes(tmp_path / "nope.yaml")
        assert info.value.errors == [f"nope.yaml: <root>: file not found: {tmp_path / 'nope.yaml'}"]

    def test_errors_use_the_basename_as_given(self, tmp_path: Path) -> None:
        path = write(tmp_path, "prod-routes.yml", "providers: {}\nmodels: {m: {provider: p}}")
        with pytest.raises(ConfigError) as info:
            load_routes(path)
        assert info.value.errors == ["prod-routes.yml: models.m.provider: unknown provider 'p'"]

    def test_yaml_syntax_error_has_line_and_column(self, tmp_path: Path) -> None:
        path = write(tmp_path, "routes.yaml", "providers:\n  p: {type: mock\nmodels: {}\n")
        with pytest.raises(ConfigError) as info:
            load_routes(path)
        [error] = info.value.errors
        assert error.startswith("routes.yaml: line 3, column 7: invalid YAML: ")

    def test_unquoted_env_reference_in_flow_mapping_gets_a_hint(self, tmp_path: Path) -> None:
        path = write(tmp_path, "routes.yaml", "providers:\n  o: {type: openai, api_key: ${KEY}}\n")
        with pytest.raises(ConfigError) as info:
            load_routes(path)
        [error] = info.value.errors
        assert error.startswith("routes.yaml: line 2, column ")
        assert error.endswith('(quote ${VAR} references inside {...} or [...]: "${VAR}")')

    def test_duplicate_keys_are_refused(self, tmp_path: Path) -> None:
        text = f"tenants:\n  acme: {{}}\n  acme:\n    keys: [{{id: k, sha256: {SHA_A}}}]\n"
        with pytest.raises(ConfigError) as info:
            load_budgets(write(tmp_path, "budgets.yaml", text), None)
        assert info.value.errors == ["budgets.yaml: line 3, column 3: invalid YAML: duplicate key 'acme'"]

    def test_merge_keys_may_be_overridden(self, tmp_path: Path) -> None:
        text = """
        providers: {p: {type: mock}}
        base: &base {provider: p, upstream: x}
        models:
          m: {<<: *base, upstream: y}
        """
        # `base` is not a routes.yaml field, so that error is expected; the merge itself is fine.
        with pytest.raises(ConfigError) as info:
            load_routes(write(tmp_path, "routes.yaml", text))
        assert info.value.errors == ["routes.yaml: <root>: unknown field 'base'"]

    def test_check_combines_both_files(self, tmp_path: Path) -> None:
        routes = write(tmp_path, "routes.yaml", DESIGN_ROUTES)
        budgets = write(tmp_path, "budgets.yaml", tenant("{models: [nothing-*], keys: [{id: k, sha256: x}]}"))
        errors, warnings = check(routes, budgets, environ={"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"})
        assert errors == [f"budgets.yaml: tenants.acme.keys[0].sha256: {BAD_SHA}"]
        assert warnings == [
            "budgets.yaml: tenants.acme.models[0]: 'nothing-*' matches no model defined in the routes file"
        ]

    def test_check_validates_budgets_when_routes_are_broken(self, tmp_path: Path) -> None:
        routes = write(tmp_path, "routes.yaml", "providers: {p: {type: mock, api_key: '${K}'}}\nmodels: {}")
        budgets = write(tmp_path, "budgets.yaml", key(f"{{id: k, sha256: {SHA_A}, role: boss}}"))
        errors, warnings = check(routes, budgets, environ={})
        assert errors == [
            "routes.yaml: models: must define at least one model",
            "budgets.yaml: tenants.acme.keys[0].role: must be one of user, admin, reviewer",
        ]
        assert warnings == ["routes.yaml: providers.p.api_key: environment variable K is not set"]

    def test_check_clean(self, tmp_path: Path) -> None:
        routes = write(tmp_path, "routes.yaml", DESIGN_ROUTES)
        budgets = write(tmp_path, "budgets.yaml", DESIGN_BUDGETS)
        assert check(routes, budgets, environ={"OPENAI_API_KEY": "a", "ANTHROPIC_API_KEY": "b"}) == ([], [])

    def test_check_missing_files(self, tmp_path: Path) -> None:
        errors, _ = check(tmp_path / "r.yaml", tmp_path / "b.yaml")
        assert [e.split(":")[0] for e in errors] == ["r.yaml", "b.yaml"]
