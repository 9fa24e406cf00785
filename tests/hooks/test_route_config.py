"""routes.yaml: a route's ``plugins:`` entries (names or {name: options}), post_stream, and their checks."""

from __future__ import annotations

from gateway.config.model import RoutePlugin
from gateway.explain import explain, route_plugins
from tests.config.config_snippets import routes_errors, routes_ok

BASE = """
providers: {p: {type: mock}}
models: {a: {provider: p}}
plugins:
  guard: {url: 'http://127.0.0.1:8101', hooks: [pre, post], on_error: closed}
  rag:   {url: 'http://127.0.0.1:8102', hooks: [pre]}
  api:   {url: 'http://127.0.0.1:8103', api: true}
routes:
"""


def test_names_and_options_in_route_order_with_post_stream() -> None:
    config, _ = routes_ok(
        BASE + "  - {name: r, targets: [{model: a}], post_stream: audit,"
        " plugins: [rag, {guard: {pii: redact, post_stream: buffer, nested: {x: 1}}}]}\n"
    )
    assert config.routes[0].plugins == (
        RoutePlugin("rag", {}, "audit"),
        RoutePlugin("guard", {"pii": "redact", "nested": {"x": 1}}, "buffer"),
    )
    lines = explain(config, "a", None, None)
    assert "plugins (pre hooks in this order, post hooks in reverse):" in lines
    assert any("2. guard hooks=['pre', 'post'] on_error=closed" in line and "pii" in line for line in lines)
    described = route_plugins(config.routes[0], config)
    assert [p["name"] for p in described] == ["rag", "guard"]
    assert (
        described[1]["options"] == {"pii": "redact", "nested": {"x": 1}}
        and described[0]["post_stream"] is None
    )


def test_bad_entries_are_named_with_their_path() -> None:
    errors = routes_errors(
        BASE + "  - {name: r, targets: [{model: a}], post_stream: later, plugins: "
        "[nope, api, {guard: [1]}, {rag: {post_stream: audit}}, {guard: {post_stream: sometimes}},"
        " 3, guard, guard]}\n"
    )
    assert errors == [
        "routes.yaml: routes[0].post_stream: must be one of buffer, audit",
        "routes.yaml: routes[0].plugins[0]: unknown plugin 'nope'",
        "routes.yaml: routes[0].plugins[1]: plugin 'api' declares no hooks (plugins.api.hooks),"
        " so a route cannot use it",
        "routes.yaml: routes[0].plugins[2].guard: options must be a mapping",
        "routes.yaml: routes[0].plugins[3].rag.post_stream: plugin 'rag' has no post hook",
        "routes.yaml: routes[0].plugins[4].guard.post_stream: must be one of buffer, audit",
        "routes.yaml: routes[0].plugins[5]: must be a plugin name or {name: {options}}",
        "routes.yaml: routes[0].plugins[7]: duplicate plugin 'guard'",
    ]
