"""``${VAR}`` expansion: compose semantics, warnings with paths, and numbers from the environment."""

from __future__ import annotations

import pytest
from config_snippets import SHA_A, key, load, routes_errors, routes_ok, with_minimal

from gateway.config._validate import EnvStr
from gateway.config.env import expand
from gateway.config.parse import parse_budgets

# -- ${VAR} expansion -----------------------------------------------------------------------------------


class TestExpand:
    def test_replaces_several_references_anywhere_in_a_string(self) -> None:
        warnings: list[str] = []
        out = expand("http://${HOST}:${PORT}/v1", "x", warnings, {"HOST": "h", "PORT": "80"})
        assert out == "http://h:80/v1"
        assert warnings == []

    def test_default_applies_when_unset_or_empty(self) -> None:
        warnings: list[str] = []
        assert expand("${A:-one}/${B:-two}", "x", warnings, {"B": ""}) == "one/two"
        assert warnings == []

    def test_dash_default_applies_only_when_unset(self) -> None:
        assert expand("[${A-d}][${B-d}]", "x", [], {"A": ""}) == "[][d]"

    def test_unset_without_default_is_empty_with_a_warning(self) -> None:
        warnings: list[str] = []
        assert expand("Bearer ${TOKEN}", "providers.p.api_key", warnings, {}) == "Bearer "
        assert warnings == ["providers.p.api_key: environment variable TOKEN is not set"]

    def test_recurses_with_paths(self) -> None:
        warnings: list[str] = []
        data = {"a": [{"b": "${X}"}], "llama3.1:8b": {"k": "${Y}"}, "n": 3, "t": True}
        out = expand(data, "", warnings, {"X": "1"})
        assert out == {"a": [{"b": "1"}], "llama3.1:8b": {"k": ""}, "n": 3, "t": True}
        assert warnings == ['["llama3.1:8b"].k: environment variable Y is not set']

    def test_double_dollar_is_a_literal_dollar(self) -> None:
        assert expand("pa$$word ${X}", "x", [], {"X": "$HOME"}) == "pa$word $HOME"

    def test_substituted_text_is_not_expanded_again(self) -> None:
        assert expand("${X}", "x", [], {"X": "${Y}", "Y": "no"}) == "${Y}"

    def test_malformed_reference_is_kept_and_warned(self) -> None:
        warnings: list[str] = []
        assert expand("a ${not valid} b", "x", warnings, {}) == "a ${not valid} b"
        assert warnings == ["x: invalid variable reference '${not valid}' left as written"]

    def test_marks_substituted_strings_only(self) -> None:
        assert isinstance(expand("${X}", "x", [], {"X": "1"}), EnvStr)
        assert not isinstance(expand("plain $5", "x", [], {}), EnvStr)

    def test_reads_os_environ_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("GW_TEST_VAR", "from-env")
        assert expand("${GW_TEST_VAR}", "x", []) == "from-env"


class TestEnvInConfig:
    def test_values_and_warnings_carry_file_and_path(self) -> None:
        config, warnings = routes_ok(
            """
            providers:
              o: {type: openai, base_url: "${BASE:-https://api.openai.com/v1}", api_key: "${KEY}"}
            models:
              m: {provider: o, price: {input_per_mtok: 1, output_per_mtok: 2}}
            """
        )
        assert config.providers["o"].base_url == "https://api.openai.com/v1"
        assert config.providers["o"].api_key == ""
        assert warnings == ["routes.yaml: providers.o.api_key: environment variable KEY is not set"]
        assert type(config.providers["o"].api_key) is str  # no EnvStr leaks into the config

    def test_numbers_may_come_from_the_environment(self) -> None:
        config, _ = routes_ok(
            with_minimal("defaults: {timeout_s: '${T:-30}', max_body_bytes: '${MB}'}"), {"MB": "2048"}
        )
        assert config.defaults.timeout_s == 30.0
        assert config.defaults.max_body_bytes == 2048

    def test_a_non_number_from_the_environment_is_an_error(self) -> None:
        errors = routes_errors(with_minimal("defaults: {timeout_s: '${T}'}"), {"T": "soon"})
        assert errors == ["routes.yaml: defaults.timeout_s: must be a number (the environment gave 'soon')"]

    def test_a_quoted_literal_number_is_still_a_string(self) -> None:
        assert routes_errors(with_minimal("defaults: {timeout_s: '30'}")) == [
            "routes.yaml: defaults.timeout_s: must be a number"
        ]

    def test_budgets_expand_too(self) -> None:
        config, warnings = parse_budgets(
            load(key("{id: k, sha256: '${SHA}'}")), routes=None, environ={"SHA": SHA_A}
        )
        assert config.tenants["acme"].keys[0].sha256 == SHA_A
        assert warnings == []
