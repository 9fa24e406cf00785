"""routes.yaml: ``defaults.response_retention_s`` and a route's ``memory`` are checked at load."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "config"))
from config_snippets import routes_errors, routes_ok

from gateway.config.model import MemoryPolicy
from gateway.config.parse import ConfigError
from gateway.plugins import secret

BASE = """
providers:
  p: {type: mock}
models:
  big: {provider: p}
  small: {provider: p}
routes:
  - name: chat
    match: {model: assistant}
    targets: [{model: big}]
    memory: MEMORY
"""


def test_memory_and_retention_parse() -> None:
    config, _ = routes_ok(
        BASE.replace("MEMORY", "{max_input_tokens: 8000, summarizer: small}")
        + "defaults: {response_retention_s: 86400}\n"
    )
    assert config.routes[0].memory == MemoryPolicy(max_input_tokens=8000, summarizer="small")
    assert config.defaults.response_retention_s == 86400
    default, _ = routes_ok(BASE.replace("    memory: MEMORY\n", ""))
    assert default.routes[0].memory is None and default.defaults.response_retention_s == 30 * 86400


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ("{max_input_tokens: 8000, summarizer: nope}", "routes[0].memory.summarizer: unknown model 'nope'"),
        ("{max_input_tokens: 8000}", "routes[0].memory.summarizer: is required"),
        ("{max_input_tokens: 10, summarizer: small}", "routes[0].memory.max_input_tokens"),
        ("{max_input_tokens: 8000, summarizer: small, x: 1}", "routes[0].memory"),
        ("yes", "routes[0].memory: must be a mapping"),
    ],
)
def test_memory_errors(memory: str, expected: str) -> None:
    errors = routes_errors(BASE.replace("MEMORY", memory))
    assert any(e.startswith("routes.yaml: " + expected) for e in errors), errors


def test_retention_error() -> None:
    errors = routes_errors(BASE.replace("    memory: MEMORY\n", "") + "defaults: {response_retention_s: 5}\n")
    assert any(e.startswith("routes.yaml: defaults.response_retention_s") for e in errors), errors


def test_memory_needs_a_delegation_secret_when_not_alone() -> None:
    config, _ = routes_ok(BASE.replace("MEMORY", "{max_input_tokens: 8000, summarizer: small}"))
    with pytest.raises(ConfigError):
        secret.require(config, None)
    secret.require(config, b"x" * 32)
