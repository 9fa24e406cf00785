"""routes.yaml rules, one section at a time: providers, models, defaults, routes, plugins."""

from __future__ import annotations

import datetime

import pytest
from config_snippets import (
    MINIMAL,
    load,
    model_errors,
    provider_errors,
    routes_errors,
    routes_ok,
    with_minimal,
)

from gateway.config.model import RoutePlugin, RoutesConfig
from gateway.providers.registry import PROVIDER_TYPES

TYPES = ", ".join(PROVIDER_TYPES)  # every registered type, in registry order

# -- providers ------------------------------------------------------------------------------------------


class TestProviders:
    def test_type_is_required_and_listed(self) -> None:
        assert provider_errors("{api_key: k}") == ["routes.yaml: providers.x.type: is required"]
        assert provider_errors("{type: nosuch}") == [f"routes.yaml: providers.x.type: must be one of {TYPES}"]

    @pytest.mark.parametrize("kind", ["openai", "azure"])
    def test_base_url_required_for_openai_and_azure(self, kind: str) -> None:
        assert provider_errors(f"{{type: {kind}}}") == [
            f"routes.yaml: providers.x.base_url: is required for type {kind}"
        ]

    def test_base_url_scheme_and_trailing_slash(self) -> None:
        assert provider_errors("{type: openai, base_url: api.openai.com/v1}") == [
            "routes.yaml: providers.x.base_url: must start with http:// or https://"
        ]
        config, _ = routes_ok(
            "providers: {x: {type: openai, base_url: 'http://h/v1/'}}\n"
            "models: {m: {provider: x, price: {input_per_mtok: 0, output_per_mtok: 0}}}"
        )
        assert config.providers["x"].base_url == "http://h/v1"

    def test_anthropic_base_url_defaults_to_the_public_api(self) -> None:
        config, _ = routes_ok("providers: {x: {type: anthropic}}\nmodels: {m: {provider: x}}")
        assert config.providers["x"].base_url == "https://api.anthropic.com"

    def test_headers_and_timeout(self) -> None:
        config, _ = routes_ok(
            "providers: {x: {type: mock, headers: {X-Org: acme}, timeout_s: 2.5}}\nmodels: {m: {provider: x}}"
        )
        assert config.providers["x"].headers == {"X-Org": "acme"}
        assert config.providers["x"].timeout_s == 2.5
        assert provider_errors("{type: mock, headers: {X-N: 1}, timeout_s: 0}") == [
            "routes.yaml: providers.x.headers.X-N: must be a string",
            "routes.yaml: providers.x.timeout_s: must be > 0",
        ]
        assert provider_errors("{type: mock, headers: [a]}") == [
            "routes.yaml: providers.x.headers: must be a mapping"
        ]

    def test_azure_api_version_default_and_date(self) -> None:
        text = "providers: {x: {type: azure, base_url: 'https://n.azure.com'%s}}\nmodels: {m: {provider: x}}"
        config, _ = routes_ok(text % "")
        assert config.providers["x"].options["api_version"] == "2024-10-21"
        config, _ = routes_ok(text % ", api_version: 2025-01-01")  # YAML reads this as a date
        assert config.providers["x"].options["api_version"] == "2025-01-01"
        assert load("v: 2025-01-01") == {"v": datetime.date(2025, 1, 1)}  # why the parser converts dates
        config, _ = routes_ok(text.replace("azure", "azure_responses", 1) % ", api_version: 2025-01-01")
        assert config.providers["x"].options["api_version"] == "2025-01-01"

    def test_type_specific_fields_on_another_type(self) -> None:
        assert provider_errors("{type: openai, base_url: 'http://h', fault: 500, api_version: v}") == [
            "routes.yaml: providers.x.api_version: only valid for type azure or azure_responses",
            "routes.yaml: providers.x.fault: only valid for type mock",
        ]

    def test_mock_options(self) -> None:
        config, _ = routes_ok(
            "providers: {x: {type: mock, latency_ms: 50, fault: 429, fault_rate: 0.5}}\n"
            "models: {m: {provider: x}}"
        )
        assert config.providers["x"].options == {"latency_ms": 50.0, "fault": "429", "fault_rate": 0.5}

    def test_mock_option_rules(self) -> None:
        assert provider_errors("{type: mock, latency_ms: -1, fault: 404, fault_rate: 1.5}") == [
            "routes.yaml: providers.x.latency_ms: must be >= 0",
            "routes.yaml: providers.x.fault: must be one of none, 429, 500, 503, timeout, disconnect",
            "routes.yaml: providers.x.fault_rate: must be between 0 and 1",
        ]

    def test_unknown_field_with_suggestion(self) -> None:
        assert provider_errors("{type: openai, bse_url: 'http://h'}") == [
            "routes.yaml: providers.x: unknown field 'bse_url' (did you mean 'base_url'?)",
            "routes.yaml: providers.x.base_url: is required for type openai",
        ]

    def test_entry_must_be_a_mapping(self) -> None:
        assert provider_errors("mock") == ["routes.yaml: providers.x: must be a mapping"]


# -- models ---------------------------------------------------------------------------------------------


class TestModels:
    def test_provider_required_and_known(self) -> None:
        assert model_errors("{upstream: u}") == ["routes.yaml: models.m.provider: is required"]
        assert model_errors("{provider: q}") == ["routes.yaml: models.m.provider: unknown provider 'q'"]

    def test_a_broken_provider_is_not_also_unknown(self) -> None:
        assert routes_errors("providers: {p: {type: x}}\nmodels: {m: {provider: p}}") == [
            f"routes.yaml: providers.p.type: must be one of {TYPES}"
        ]

    def test_price_warning_and_defaults(self) -> None:
        config, warnings = routes_ok(
            "providers: {p: {type: openai, base_url: 'http://h'}}\nmodels: {m: {provider: p, upstream: real}}"
        )
        assert warnings == ["routes.yaml: models.m: no price: cost will be 0"]
        assert config.models["m"].price.input_per_mtok == 0.0
        assert config.models["m"].upstream == "real"

    def test_no_price_warning_for_a_mock(self) -> None:
        assert routes_ok(MINIMAL)[1] == []

    def test_price_fields(self) -> None:
        config, _ = routes_ok(
            "providers: {p: {type: mock}}\nmodels: {m: {provider: p, price: {input_per_mtok: 3, "
            "output_per_mtok: 15, cached_input_per_mtok: 0.3, cache_write_per_mtok: 3.75}}}"
        )
        price = config.models["m"].price
        assert (price.input_per_mtok, price.output_per_mtok) == (3.0, 15.0)
        assert (price.cached_input_per_mtok, price.cache_write_per_mtok) == (0.3, 3.75)

    def test_price_rules(self) -> None:
        assert model_errors("{provider: p, price: {input_per_mtok: -1, cached_input_per_mtok: x}}") == [
            "routes.yaml: models.m.price.output_per_mtok: is required",
            "routes.yaml: models.m.price.input_per_mtok: must be >= 0",
            "routes.yaml: models.m.price.cached_input_per_mtok: must be a number",
        ]

    def test_token_limits_are_positive_integers(self) -> None:
        assert model_errors("{provider: p, price: {input_per_mtok: 1, output_per_mtok: 1}, "
                            "context_window: 1.5, max_output_tokens: true}") == [
            "routes.yaml: models.m.context_window: must be an integer",
            "routes.yaml: models.m.max_output_tokens: must be an integer",
        ]  # fmt: skip
        assert model_errors("{provider: p, context_window: 100, max_output_tokens: 200}") == [
            "routes.yaml: models.m.max_output_tokens: must be <= context_window (100)"
        ]

    def test_names_with_dots_are_quoted_in_paths(self) -> None:
        assert routes_errors("providers: {p: {type: mock}}\nmodels: {'llama3.1:8b': {provider: q}}") == [
            "routes.yaml: models[\"llama3.1:8b\"].provider: unknown provider 'q'"
        ]


# -- defaults -------------------------------------------------------------------------------------------


class TestDefaults:
    def test_values(self) -> None:
        config, _ = routes_ok(
            with_minimal(
                """
                defaults:
                  timeout_s: 5
                  retry: {attempts: 1, backoff_initial_s: 0, backoff_max_s: 0}
                  breaker: {failures: 1, reset_s: 0.5}
                  max_body_bytes: 1024
                  store_failure: open
                  open_spend_usd: 0.25
                  estimate_margin: 0
                  max_concurrent_upstream: 64
                  queue_timeout_s: 0
                """
            )
        )
        d = config.defaults
        assert (d.max_concurrent_upstream, d.queue_timeout_s, d.open_spend_usd) == (64, 0.0, 0.25)
        assert (d.timeout_s, d.max_body_bytes, d.store_failure, d.estimate_margin) == (5.0, 1024, "open", 0.0)
        assert (d.retry.attempts, d.retry.backoff_initial_s, d.retry.backoff_max_s) == (1, 0.0, 0.0)
        assert (d.breaker.failures, d.breaker.reset_s) == (1, 0.5)

    def test_rules(self) -> None:
        errors = routes_errors(
            with_minimal(
                """
                defaults:
                  timeout_s: 0
                  retry: {attempts: 0, backoff_initial_s: -1, backoff_max_s: 2}
                  breaker: {failures: 0, reset_s: 0}
                  max_body_bytes: 1023
                  store_failure: maybe
                  open_spend_usd: -1
                  estimate_margin: 1.5
                  max_concurrent_upstream: 0
                  queue_timeout_s: -0.5
                """
            )
        )
        assert errors == [
            "routes.yaml: defaults.timeout_s: must be > 0",
            "routes.yaml: defaults.retry.attempts: must be >= 1",
            "routes.yaml: defaults.retry.backoff_initial_s: must be >= 0",
            "routes.yaml: defaults.breaker.failures: must be >= 1",
            "routes.yaml: defaults.breaker.reset_s: must be > 0",
            "routes.yaml: defaults.max_body_bytes: must be >= 1024",
            "routes.yaml: defaults.store_failure: must be one of closed, open",
            "routes.yaml: defaults.open_spend_usd: must be >= 0",
            "routes.yaml: defaults.estimate_margin: must be between 0 and 1",
            "routes.yaml: defaults.max_concurrent_upstream: must be >= 1",
            "routes.yaml: defaults.queue_timeout_s: must be >= 0",
        ]

    def test_backoff_max_below_initial(self) -> None:
        assert routes_errors(with_minimal("defaults: {retry: {backoff_initial_s: 2, backoff_max_s: 1}}")) == [
            "routes.yaml: defaults.retry.backoff_max_s: must be >= backoff_initial_s (2)"
        ]
        # Only initial given: the built-in maximum (8) is what it conflicts with.
        assert routes_errors(with_minimal("defaults: {retry: {backoff_initial_s: 10}}")) == [
            "routes.yaml: defaults.retry.backoff_initial_s: must be <= backoff_max_s (8)"
        ]

    def test_booleans_and_non_finite_values_are_not_numbers(self) -> None:
        assert routes_errors(with_minimal("defaults: {timeout_s: true, estimate_margin: .nan}")) == [
            "routes.yaml: defaults.timeout_s: must be a number",
            "routes.yaml: defaults.estimate_margin: must be a finite number",
        ]

    def test_empty_sections_mean_defaults(self) -> None:
        config, _ = routes_ok(with_minimal("defaults:\n  retry:\n  breaker:\n"))
        assert config.defaults.retry.attempts == 3
        # No cap on concurrent upstream requests unless one is configured.
        assert (config.defaults.max_concurrent_upstream, config.defaults.queue_timeout_s) == (None, 1.0)

    def test_concurrency_cap_must_be_an_integer(self) -> None:
        assert routes_errors(with_minimal("defaults: {max_concurrent_upstream: 2.5}")) == [
            "routes.yaml: defaults.max_concurrent_upstream: must be an integer"
        ]


# -- routes ---------------------------------------------------------------------------------------------

ROUTES_BASE = """
providers: {p: {type: mock}}
models: {a: {provider: p}, b: {provider: p}}
plugins: {rag: {url: 'http://127.0.0.1:8101', hooks: [pre]}}
defaults: {retry: {attempts: 5, backoff_initial_s: 1, backoff_max_s: 4}}
routes:
"""


def route_errors(*routes: str) -> list[str]:
    return routes_errors(ROUTES_BASE + "".join(f"  - {r}\n" for r in routes))


def route_ok(*routes: str) -> RoutesConfig:
    return routes_ok(ROUTES_BASE + "".join(f"  - {r}\n" for r in routes))[0]


class TestRoutes:
    def test_full_route(self) -> None:
        config = route_ok(
            "{name: r, match: {task: t, model: 'gpt-*', tenant: acme}, targets: [{model: a}],"
            " fallbacks: [b], cache: {ttl_s: 60, mode: always}, plugins: [rag], timeout_s: 9,"
            " retry: {attempts: 2}}"
        )
        r = config.routes[0]
        assert (r.match.task, r.match.model, r.match.tenant) == ("t", "gpt-*", "acme")
        assert r.targets[0].weight == 1.0
        assert r.cache is not None and (r.cache.ttl_s, r.cache.mode) == (60, "always")
        assert (r.fallbacks, r.plugins, r.timeout_s) == (("b",), (RoutePlugin("rag"),), 9.0)
        # Fields left out of a route's retry come from defaults.retry, not the built-ins.
        assert r.retry is not None
        assert (r.retry.attempts, r.retry.backoff_initial_s, r.retry.backoff_max_s) == (2, 1.0, 4.0)

    def test_optional_parts_default_to_none(self) -> None:
        r = route_ok("{name: r, targets: [{model: a}]}").routes[0]
        assert (r.cache, r.retry, r.timeout_s, r.fallbacks, r.plugins) == (None, None, None, (), ())

    def test_unknown_model_message(self) -> None:
        assert route_errors("{name: x, targets: [{model: a}]}", "{name: y, targets: [{model: gpt-5}]}") == [
            "routes.yaml: routes[1].targets[0].model: unknown model 'gpt-5'"
        ]

    def test_name_and_targets_are_required(self) -> None:
        assert route_errors("{match: {task: t}}") == [
            "routes.yaml: routes[0].name: is required",
            "routes.yaml: routes[0].targets: is required",
        ]

    def test_targets_must_be_a_non_empty_list_of_mappings(self) -> None:
        assert route_errors("{name: r, targets: []}") == [
            "routes.yaml: routes[0].targets: must list at least one target"
        ]
        assert route_errors("{name: r, targets: a}") == ["routes.yaml: routes[0].targets: must be a list"]
        assert route_errors("{name: r, targets: [a]}") == [
            "routes.yaml: routes[0].targets[0]: must be a mapping"
        ]
        assert route_errors("{name: r, targets: [{weight: 2}]}") == [
            "routes.yaml: routes[0].targets[0].model: is required"
        ]

    def test_duplicate_name(self) -> None:
        assert route_errors("{name: r, targets: [{model: a}]}", "{name: r, targets: [{model: b}]}") == [
            "routes.yaml: routes[1].name: duplicate route name 'r'"
        ]

    def test_fallbacks_and_plugins_must_exist(self) -> None:
        assert route_errors(
            "{name: r, targets: [{model: a}], fallbacks: [b, c, 3], plugins: [rag, tools]}"
        ) == [
            "routes.yaml: routes[0].fallbacks[1]: unknown model 'c'",
            "routes.yaml: routes[0].fallbacks[2]: must be a string",
            "routes.yaml: routes[0].plugins[1]: unknown plugin 'tools'",
        ]

    def test_cache_rules(self) -> None:
        assert route_errors("{name: r, targets: [{model: a}], cache: {mode: sometimes}}") == [
            "routes.yaml: routes[0].cache.ttl_s: is required",
            "routes.yaml: routes[0].cache.mode: must be one of deterministic, always",
        ]
        assert route_errors("{name: r, targets: [{model: a}], cache: {ttl_s: 0.5}}") == [
            "routes.yaml: routes[0].cache.ttl_s: must be an integer"
        ]

    def test_timeout_retry_and_match_rules(self) -> None:
        assert route_errors(
            "{name: r, targets: [{model: a}], timeout_s: -1, retry: {attempts: 0, backof_max_s: 1},"
            " match: {modle: x, task: ''}}"
        ) == [
            "routes.yaml: routes[0].match: unknown field 'modle' (did you mean 'model'?)",
            "routes.yaml: routes[0].match.task: must not be empty",
            "routes.yaml: routes[0].timeout_s: must be > 0",
            "routes.yaml: routes[0].retry: unknown field 'backof_max_s' (did you mean 'backoff_max_s'?)",
            "routes.yaml: routes[0].retry.attempts: must be >= 1",
        ]

    def test_empty_match_catches_all_and_shadows_later_routes(self) -> None:
        text = (
            ROUTES_BASE + "  - {name: all, targets: [{model: a}]}\n  - {name: later, targets: [{model: b}]}\n"
        )
        config, warnings = routes_ok(text)
        assert config.routes[0].match.task is None and config.routes[0].match.model is None
        assert warnings == [
            "routes.yaml: routes[1]: unreachable: route 'all' before it matches every request"
        ]

    def test_log_content_is_off_by_default_and_opt_in(self) -> None:
        assert route_ok("{name: r, targets: [{model: a}]}").routes[0].log_content is None
        assert route_ok("{name: r, targets: [{model: a}], log_content: false}").routes[0].log_content is None
        on = route_ok("{name: r, targets: [{model: a}], log_content: true}").routes[0].log_content
        assert on is not None and on.max_chars == 2000
        sized = route_ok("{name: r, targets: [{model: a}], log_content: {max_chars: 50}}").routes[0]
        assert sized.log_content is not None and sized.log_content.max_chars == 50
        off = route_ok("{name: r, targets: [{model: a}], log_content: {enabled: false, max_chars: 9}}")
        assert off.routes[0].log_content is None

    def test_log_content_rules(self) -> None:
        assert route_errors("{name: r, targets: [{model: a}], log_content: yes please}") == [
            "routes.yaml: routes[0].log_content: must be true, false or a mapping"
        ]
        assert route_errors(
            "{name: r, targets: [{model: a}], log_content: {enabled: 'no', max_chars: 0, max_char: 5}}"
        ) == [
            "routes.yaml: routes[0].log_content: unknown field 'max_char' (did you mean 'max_chars'?)",
            "routes.yaml: routes[0].log_content.enabled: must be true or false",
        ]
        assert route_errors("{name: r, targets: [{model: a}], log_content: {max_chars: 0}}") == [
            "routes.yaml: routes[0].log_content.max_chars: must be >= 1"
        ]

    def test_routes_must_be_a_list_of_mappings(self) -> None:
        assert routes_errors(with_minimal("routes: {a: 1}")) == ["routes.yaml: routes: must be a list"]
        assert routes_errors(with_minimal("routes: [x]")) == ["routes.yaml: routes[0]: must be a mapping"]


# -- plugins --------------------------------------------------------------------------------------------


class TestPlugins:
    def test_defaults(self) -> None:
        config, _ = routes_ok(with_minimal("plugins: {rag: {url: 'https://rag.internal'}}"))
        plugin = config.plugins["rag"]
        assert (plugin.name, plugin.url, plugin.timeout_s, plugin.on_error) == (
            "rag",
            "https://rag.internal",
            1.0,
            "open",
        )

    def test_rules(self) -> None:
        errors = routes_errors(
            with_minimal(
                """
                plugins:
                  a: {timeout_s: 0}
                  b: {url: 'ftp://x', on_error: ignore}
                  "c d": {url: 'http://x'}
                """
            )
        )
        assert errors == [
            "routes.yaml: plugins.a.url: is required",
            "routes.yaml: plugins.a.timeout_s: must be > 0",
            "routes.yaml: plugins.b.url: must start with http:// or https://",
            "routes.yaml: plugins.b.on_error: must be one of open, closed",
            "routes.yaml: plugins: invalid plugin name 'c d': use only letters, digits, '.', '_' and '-'",
        ]


class TestUpstreamLimits:
    """``defaults.upstream_limits`` and a provider's own ``limits`` over them (issue 16)."""

    def test_defaults_and_a_provider_override(self) -> None:
        config, _ = routes_ok(
            """
            providers:
              big:
                type: openai
                base_url: "http://h/v1"
                limits: {max_body_bytes: 2048, max_event_bytes: 4096}
              plain: {type: openai, base_url: "http://h/v1"}
            models:
              m: {provider: plain}
            defaults:
              upstream_limits: {max_error_bytes: 8192, max_event_bytes: 16384}
            """
        )
        plain, big = config.providers["plain"].limits, config.providers["big"].limits
        assert (plain.max_body_bytes, plain.max_error_bytes, plain.max_event_bytes) == (32 << 20, 8192, 16384)
        assert plain.max_stream_bytes == 256 << 20
        # the provider's fields win; the rest come from the defaults, not the built-in values
        assert (big.max_body_bytes, big.max_error_bytes, big.max_event_bytes) == (2048, 8192, 4096)

    def test_rules_name_their_path(self) -> None:
        errors = routes_errors(
            """
            providers:
              p: {type: openai, base_url: "http://h/v1", limits: {max_body_bytes: 10, max_lines: 5}}
            models:
              m: {provider: p}
            defaults:
              upstream_limits: {max_stream_bytes: -1, max_error_bytes: "big"}
            """
        )
        assert errors == [
            "routes.yaml: defaults.upstream_limits.max_error_bytes: must be an integer",
            "routes.yaml: defaults.upstream_limits.max_stream_bytes: must be >= 1024",
            "routes.yaml: providers.p.limits: unknown field 'max_lines'",
            "routes.yaml: providers.p.limits.max_body_bytes: must be >= 1024",
        ]


class TestPluginFields:
    BASE = "providers: {p: {type: mock}}\nmodels: {m: {provider: p}}\nplugins:\n  guard: "

    def test_hooks_api_and_token_are_read(self) -> None:
        cfg, _ = routes_ok(
            self.BASE + "{url: 'http://127.0.0.1:8101/', hooks: [post, pre], api: true, token: t}\n"
        )
        guard = cfg.plugins["guard"]
        assert (guard.url, guard.hooks, guard.api, guard.token) == (
            "http://127.0.0.1:8101",
            ("pre", "post"),
            True,
            "t",
        )

    def test_defaults(self) -> None:
        cfg, _ = routes_ok(self.BASE + "{url: 'http://127.0.0.1:8101'}\n")
        guard = cfg.plugins["guard"]
        assert (guard.hooks, guard.api, guard.token, guard.on_error) == ((), False, None, "open")

    def test_bad_hooks_and_api_are_named(self) -> None:
        assert routes_errors(
            self.BASE + "{url: 'http://h', hooks: [pre, pre, during], api: yes-please}\n"
        ) == [
            "routes.yaml: plugins.guard.hooks[1]: duplicate hook 'pre'",
            "routes.yaml: plugins.guard.hooks[2]: must be one of pre, post, tool",
            "routes.yaml: plugins.guard.api: must be true or false",
        ]
