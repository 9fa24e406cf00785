"""Where the delegation secret comes from, and the refusal when plugins run without a shared one."""

from __future__ import annotations

import pytest

from gateway.config.model import Match, PluginConfig, Route, RoutePlugin, RoutesConfig, Target
from gateway.config.parse import ConfigError
from gateway.delegation import SECRET_ENV
from gateway.plugins import secret


def _routes(with_plugin: bool) -> RoutesConfig:
    plugins = (RoutePlugin("guard"),) if with_plugin else ()
    route = Route("r", Match(), (Target("m"),), plugins=plugins)
    return RoutesConfig({}, {}, (route,), plugins={"guard": PluginConfig("guard", "http://127.0.0.1:1")})


def test_the_environment_wins_and_must_be_long_enough() -> None:
    assert secret.from_env({SECRET_ENV: "x" * 32}, alone=False) == b"x" * 32
    with pytest.raises(ConfigError, match="at least 32"):
        secret.from_env({SECRET_ENV: "short"}, alone=True)


def test_a_process_alone_makes_its_own_and_others_have_none() -> None:
    a, b = secret.from_env({}, alone=True), secret.from_env({}, alone=True)
    assert a is not None and b is not None and a != b and len(a) >= 32
    assert secret.from_env({}, alone=False) is None


def test_plugins_without_a_shared_secret_are_refused_with_what_to_set() -> None:
    secret.require(_routes(with_plugin=False), None)
    secret.require(_routes(with_plugin=True), b"k" * 32)
    with pytest.raises(ConfigError, match=SECRET_ENV):
        secret.require(_routes(with_plugin=True), None)
