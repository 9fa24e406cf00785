"""``gateway check`` and the provider registry: every documented option of every provider type is
accepted, a misspelled one is rejected with a suggestion, another type's option is named as such.

A new provider type adds its rows to ``DOCUMENTED`` and ``MISSPELLED`` (the coverage test fails until
it does).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from config_snippets import provider_errors, routes_ok

from gateway.providers import registry

CREDENTIALS = str(Path(__file__).parent / "fixtures" / "google-credentials.json")

# type -> (an entry with every documented option, the options the adapter then gets)
DOCUMENTED: dict[str, tuple[dict[str, Any], dict[str, object]]] = {
    "openai": ({"base_url": "http://h/v1"}, {}),
    "openai_responses": ({"base_url": "http://h/v1"}, {}),
    "azure": (
        {"base_url": "https://n.openai.azure.com", "api_version": "2025-01-01-preview"},
        {"api_version": "2025-01-01-preview"},
    ),
    "azure_responses": (
        {"base_url": "https://n.openai.azure.com", "api_version": "2025-04-01-preview"},
        {"api_version": "2025-04-01-preview"},
    ),
    "anthropic": ({"default_max_tokens": 1024}, {"default_max_tokens": 1024}),
    "gemini": ({}, {}),
    "vertex": (
        {"project": "acme-ml", "location": "europe-west4", "credentials_file": CREDENTIALS},
        {"project": "acme-ml", "location": "europe-west4", "credentials_file": CREDENTIALS},
    ),
    "bedrock": (
        {
            "region": "eu-west-3",
            "profile": "prod",
            "aws_access_key_id": "AKIDEXAMPLE",
            "aws_secret_access_key": "secret",
            "aws_session_token": "token",
        },
        {
            "region": "eu-west-3",
            "profile": "prod",
            "aws_access_key_id": "AKIDEXAMPLE",
            "aws_secret_access_key": "secret",
            "aws_session_token": "token",
        },
    ),
    "mock": (
        {"latency_ms": 5, "fault": "503", "fault_rate": 0.25},
        {"latency_ms": 5.0, "fault": "503", "fault_rate": 0.25},
    ),
}
# The fields every type takes (parsed by the config parser itself, not by the registry).
COMMON = {"api_key": "k", "headers": {"x-org": "acme"}, "timeout_s": 5, "limits": {"max_body_bytes": 1 << 20}}
# Common fields a type's documented row cannot take with its other options (vertex: api_key is express
# mode, credentials_file the alternative; test_vertex_config covers api_key alone).
NOT_WITH: dict[str, set[str]] = {"vertex": {"api_key"}}

# type -> (a misspelled field, the error gateway check prints for it)
MISSPELLED: dict[str, tuple[str, str]] = {
    "openai": ("api_kye", "unknown field 'api_kye' (did you mean 'api_key'?)"),
    "openai_responses": ("timeout", "unknown field 'timeout' (did you mean 'timeout_s'?)"),
    "azure": ("api_verison", "unknown field 'api_verison' (did you mean 'api_version'?)"),
    "azure_responses": ("apiversion", "unknown field 'apiversion' (did you mean 'api_version'?)"),
    "anthropic": (
        "default_max_token",
        "unknown field 'default_max_token' (did you mean 'default_max_tokens'?)",
    ),
    "gemini": ("base_ulr", "unknown field 'base_ulr' (did you mean 'base_url'?)"),
    "vertex": ("credential_file", "unknown field 'credential_file' (did you mean 'credentials_file'?)"),
    "bedrock": ("aws_secret_key", "unknown field 'aws_secret_key' (did you mean 'aws_secret_access_key'?)"),
    "mock": ("fault_rat", "unknown field 'fault_rat' (did you mean 'fault_rate'?)"),
}


def _entry(kind: str, fields: dict[str, Any]) -> str:
    return yaml.safe_dump({"type": kind, **fields}, default_flow_style=True).strip()


def test_every_registered_type_is_covered() -> None:
    assert set(DOCUMENTED) == set(registry.PROVIDERS) == set(MISSPELLED)


@pytest.mark.parametrize("kind", sorted(DOCUMENTED))
def test_documented_options_are_accepted(kind: str) -> None:
    fields, expected = DOCUMENTED[kind]
    common = {k: v for k, v in COMMON.items() if k not in NOT_WITH.get(kind, set())}
    text = f"providers:\n  x: {_entry(kind, {**common, **fields})}\nmodels:\n  m: {{provider: x}}\n"
    config, _ = routes_ok(text)
    provider = config.providers["x"]
    assert provider.type == kind
    assert dict(provider.options) == expected
    assert provider.api_key == common.get("api_key", "") and provider.timeout_s == 5


@pytest.mark.parametrize("kind", sorted(MISSPELLED))
def test_a_misspelled_option_is_rejected(kind: str) -> None:
    fields, _ = DOCUMENTED[kind]
    wrong, message = MISSPELLED[kind]
    errors = provider_errors(_entry(kind, {**fields, wrong: 1}))
    assert errors == [f"routes.yaml: providers.x: {message}"]


@pytest.mark.parametrize("kind", sorted(DOCUMENTED))
def test_another_types_option_is_named(kind: str) -> None:
    """Each type's own options, set on a type that does not take them, are errors naming the types that do."""
    own = {o.name for o in registry.PROVIDERS[kind].options}
    for other, row in registry.PROVIDERS.items():
        fields, _ = DOCUMENTED[other]
        for option in row.options:
            if option.name in own:
                continue
            errors = provider_errors(_entry(kind, {**DOCUMENTED[kind][0], option.name: fields[option.name]}))
            takes = " or ".join(registry.types_with(option.name))
            assert errors == [f"routes.yaml: providers.x.{option.name}: only valid for type {takes}"]


def test_defaults_are_filled_in() -> None:
    config, _ = routes_ok(
        "providers: {a: {type: anthropic}, z: {type: azure, base_url: 'https://n'}}\n"
        "models: {m: {provider: a}}"
    )
    assert dict(config.providers["a"].options) == {"default_max_tokens": 4096}
    assert config.providers["a"].base_url == "https://api.anthropic.com"
    assert dict(config.providers["z"].options) == {"api_version": "2024-10-21"}


def test_option_values_are_checked() -> None:
    assert provider_errors("{type: anthropic, default_max_tokens: 0}") == [
        "routes.yaml: providers.x.default_max_tokens: must be >= 1"
    ]
    assert provider_errors("{type: anthropic, default_max_tokens: many}") == [
        "routes.yaml: providers.x.default_max_tokens: must be an integer"
    ]


def test_check_command_accepts_the_documented_anthropic_option(tmp_path: Path) -> None:
    """The CLI as ops run it: ``default_max_tokens`` (documented on the anthropic adapter) passes."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "providers: {a: {type: anthropic, api_key: k, default_max_tokens: 2048}}\n"
        "models: {c: {provider: a, price: {input_per_mtok: 3, output_per_mtok: 15}}}\n"
    )
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("tenants: {}\n")
    ok = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--routes", str(routes), "--budgets", str(budgets)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    routes.write_text(routes.read_text().replace("default_max_tokens", "default_max_token"))
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--routes", str(routes), "--budgets", str(budgets)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "providers.a: unknown field 'default_max_token' (did you mean 'default_max_tokens'?)" in (
        bad.stdout + bad.stderr
    )


def test_checking_a_config_imports_no_adapter() -> None:
    """The registry names adapters by module: parsing a config must not import them."""
    code = (
        "import sys\n"
        "from gateway.config.parse import parse_routes\n"
        "parse_routes({'providers': {'a': {'type': 'anthropic'}, 'm': {'type': 'mock'}},"
        " 'models': {'c': {'provider': 'a'}}}, environ={})\n"
        "loaded = [m for m in sys.modules if m.startswith('gateway.providers.')]\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['gateway.providers.registry']", out.stdout


def test_bedrock_needs_both_halves_of_an_explicit_key() -> None:
    """A key id without its secret (an unset ${ENV} in one of them) would sign with the machine's own
    credentials instead: an error, not a silent fallback."""
    assert provider_errors("{type: bedrock, aws_access_key_id: AKID}") == [
        "routes.yaml: providers.x.aws_access_key_id: needs aws_secret_access_key too"
    ]
    assert provider_errors("{type: bedrock, aws_session_token: t}") == [
        "routes.yaml: providers.x.aws_session_token: needs aws_access_key_id too",
        "routes.yaml: providers.x.aws_session_token: needs aws_secret_access_key too",
    ]
    config, _ = routes_ok("providers: {b: {type: bedrock}}\nmodels: {m: {provider: b}}")
    assert dict(config.providers["b"].options) == {
        "region": "",
        "profile": "",
        "aws_access_key_id": "",
        "aws_secret_access_key": "",
        "aws_session_token": "",
    }
