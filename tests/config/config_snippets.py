"""Shared YAML snippets and helpers for the config parser tests (imported by module name, like
``upstreams``)."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Mapping

import pytest
import yaml

from gateway.config.model import RoutesConfig
from gateway.config.parse import ConfigError, parse_budgets, parse_routes

BAD_SHA = "must be the hex sha256 of the secret (64 hex characters)"
NAME_RULE = "use only letters, digits, '.', '_' and '-'"

SHA_A = hashlib.sha256(b"secret-a").hexdigest()
SHA_B = hashlib.sha256(b"secret-b").hexdigest()

# The examples from DESIGN.md. `${VAR}` inside a flow mapping must be quoted to be valid YAML (a plain
# scalar ends at `{` there), so the api_key values are quoted; everything else is verbatim.
DESIGN_ROUTES = """
providers:
  openai:    {type: openai, base_url: https://api.openai.com/v1, api_key: "${OPENAI_API_KEY}"}
  anthropic: {type: anthropic, api_key: "${ANTHROPIC_API_KEY}"}
  local:     {type: mock}

defaults:
  timeout_s: 60                      # whole request, all attempts included
  retry: {attempts: 3, backoff_initial_s: 0.25, backoff_max_s: 8}   # attempts = tries per deployment
  breaker: {failures: 5, reset_s: 30}                                # per deployment
  max_body_bytes: 10485760           # larger request bodies get 413
  store_failure: closed              # closed | open (see "Money and limits")
  estimate_margin: 0.10              # prompt-token estimate padding for reservations

models:                              # deployments clients may reach
  gpt-4o-mini:
    provider: openai
    upstream: gpt-4o-mini            # the provider's model name; defaults to the key
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}
    context_window: 128000
    max_output_tokens: 16384
  claude-haiku:
    provider: anthropic
    upstream: claude-3-5-haiku-latest
    price: {input_per_mtok: 0.80, output_per_mtok: 4.00}
    context_window: 200000
    max_output_tokens: 8192
  echo: {provider: local, price: {input_per_mtok: 0, output_per_mtok: 0}}

routes:                              # first match wins
  - name: summarize
    match: {task: summarize}         # task from the x-gateway-task header
    targets: [{model: gpt-4o-mini, weight: 3}, {model: claude-haiku, weight: 1}]
    fallbacks: [echo]                # tried in order after the targets fail
    cache: {ttl_s: 3600}             # mode: deterministic (default) | always
    plugins: [rag]
  - name: gpt4-to-mini
    match: {model: "gpt-4o"}         # glob on the model the client asked for
    targets: [{model: gpt-4o-mini}]
  - name: acme-premium
    match: {tenant: acme, model: "claude-*"}   # keys in one match must all hold
    targets: [{model: claude-haiku}]

plugins:
  rag:   {url: http://127.0.0.1:8101, hooks: [pre], timeout_s: 1.0, on_error: open}  # open: skip
  tools: {url: http://127.0.0.1:8102, timeout_s: 30,  on_error: closed}
  hitl:  {url: http://127.0.0.1:8103, timeout_s: 1.0, on_error: closed}
"""

DESIGN_BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 500, period: monthly}}      # daily | weekly | monthly | total
    limits: {{rpm: 600, tpm: 200000}}
    models: ["gpt-4o-mini", "claude-*"]      # globs; omitted = all
    keys:
      - id: acme-backend
        sha256: "{SHA_A}" # secrets never live in files
        role: user                           # user | admin | reviewer
        budget: {{usd: 50, period: daily}}     # optional, inside the tenant's
        limits: {{rpm: 60}}
"""

MINIMAL = """
providers:
  p: {type: mock}
models:
  m: {provider: p}
"""


def load(text: str) -> object:
    return yaml.safe_load(textwrap.dedent(text))


def routes_ok(text: str, environ: Mapping[str, str] | None = None) -> tuple[RoutesConfig, list[str]]:
    return parse_routes(load(text), environ=environ or {})


def routes_errors(text: str, environ: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_routes(load(text), environ=environ or {})
    return info.value.errors


def with_minimal(extra: str) -> str:
    """MINIMAL plus more top-level YAML (a section it lacks)."""
    return MINIMAL + textwrap.dedent(extra)


def provider_errors(body: str) -> list[str]:
    return routes_errors(f"providers:\n  x: {body}\nmodels:\n  m: {{provider: x}}\n")


def model_errors(body: str) -> list[str]:
    return routes_errors(f"providers:\n  p: {{type: openai, base_url: http://u}}\nmodels:\n  m: {body}\n")


def budgets_errors(text: str, routes: RoutesConfig | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_budgets(load(text), routes=routes, environ={})
    return info.value.errors


def tenant(body: str) -> str:
    return f"tenants:\n  acme: {body}\n"


def key(body: str) -> str:
    return f"tenants:\n  acme:\n    keys:\n      - {body}\n"
