"""Routing: task header, model globs, tenants, weights, fallbacks, allow-lists, no-match behaviour."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from gateway.config.parse import parse_routes
from gateway.errors import NotFound, PermissionDenied
from gateway.pipeline.auth import Principal
from gateway.pipeline.route import Router

ROUTES = """
providers:
  a: {type: mock}
models:
  gpt-4o-mini: {provider: a}
  claude-haiku: {provider: a}
  echo: {provider: a}
  big: {provider: a}
routes:
  - name: summarize
    match: {task: summarize}
    targets: [{model: gpt-4o-mini, weight: 3}, {model: claude-haiku, weight: 1}]
    fallbacks: [echo]
    cache: {ttl_s: 60}
  - name: gpt4-to-mini
    match: {model: "gpt-4o"}
    targets: [{model: gpt-4o-mini}]
  - name: acme-premium
    match: {tenant: acme, model: "claude-*"}
    targets: [{model: big}]
    timeout_s: 5
"""


def router(seed: int = 1) -> Router:
    config, _ = parse_routes(yaml.safe_load(ROUTES))
    return Router(config, random.Random(seed))


def who(tenant: str = "acme", models: tuple[str, ...] | None = None) -> Principal:
    return Principal(tenant=tenant, key_id=f"{tenant}-1", role="user", models=models)


def names(plan) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.name for c in plan.candidates]


def test_task_route_orders_targets_by_weight_then_fallbacks() -> None:
    r = router()
    firsts = Counter(names(r.plan("anything", "summarize", who()))[0] for _ in range(4000))
    assert 0.70 < firsts["gpt-4o-mini"] / 4000 < 0.80
    plan = r.plan("anything", "summarize", who())
    assert sorted(names(plan)[:2]) == ["claude-haiku", "gpt-4o-mini"] and names(plan)[2] == "echo"
    assert plan.route == "summarize" and plan.cache is not None and plan.cache.ttl_s == 60


def test_model_glob_and_tenant_match() -> None:
    r = router()
    assert names(r.plan("gpt-4o", None, who())) == ["gpt-4o-mini"]
    acme = r.plan("claude-3-opus", None, who("acme"))
    assert acme.route == "acme-premium" and names(acme) == ["big"] and acme.timeout_s == 5
    with pytest.raises(NotFound):
        r.plan("claude-3-opus", None, who("globex"))  # no route, no such deployment


def test_no_route_goes_to_the_named_model_or_404() -> None:
    r = router()
    plan = r.plan("claude-haiku", None, who("globex"))
    assert plan.route == "default" and names(plan) == ["claude-haiku"]
    with pytest.raises(NotFound) as info:
        r.plan("gpt-5", None, who())
    assert info.value.code == "model_not_found" and info.value.status == 404


def test_allow_list_drops_deployments_and_403s_when_none_remain() -> None:
    r = router()
    assert names(r.plan("x", "summarize", who(models=("echo", "claude-*")))) == ["claude-haiku", "echo"]
    with pytest.raises(PermissionDenied) as info:
        r.plan("gpt-4o", None, who(models=("claude-*",)))
    assert "gpt-4o" in info.value.message and info.value.status == 403


def test_reachable_names_for_models_listing() -> None:
    r = router()
    assert sorted(r.reachable(who(models=("gpt-*",)))) == ["gpt-4o", "gpt-4o-mini"]


def test_a_plan_without_a_draw_is_worked_out_once_per_key() -> None:
    r = router()
    acme = who("acme")
    first = r.plan("gpt-4o", None, acme)
    assert r.plan("gpt-4o", None, acme) is first  # the same key, model and task: kept
    # a key whose record changed (a new Principal for the same id) gets a plan of its own
    narrowed = who("acme", models=("claude-*",))
    with pytest.raises(PermissionDenied):
        r.plan("gpt-4o", None, narrowed)
    assert r.plan("claude-3-opus", None, acme) is not first
    # a weighted route is drawn again for every request, never kept
    plans = {tuple(names(r.plan("x", "summarize", acme))) for _ in range(200)}
    assert len(plans) == 2


REROUTED = """
providers:
  a: {type: mock}
models:
  gpt-4o-mini: {provider: a}
  claude-haiku: {provider: a}
  echo: {provider: a}
routes:
  - name: mini-to-haiku
    match: {model: "gpt-4o-mini"}
    targets: [{model: claude-haiku}]
    fallbacks: [echo]
"""


def test_models_listing_agrees_with_routing_and_the_403_names_the_blocked_deployments() -> None:
    # The case: a route sends gpt-4o-mini to claude-haiku, and the tenant may use gpt-4o-mini
    # only. The name must not be listed (a request for it is refused), and the 403 says why.
    config, _ = parse_routes(yaml.safe_load(REROUTED))
    r = Router(config, random.Random(1))
    tenant_only_mini = who(models=("gpt-4o-mini",))
    assert sorted(r.reachable(tenant_only_mini)) == []
    with pytest.raises(PermissionDenied) as info:
        r.plan("gpt-4o-mini", None, tenant_only_mini)
    message = info.value.message
    assert "route 'mini-to-haiku'" in message and "'claude-haiku', 'echo'" in message, message
    # every listed name is one a request for succeeds, and every name that plans is listed
    for principal in (who(), who(models=("echo",)), who(models=("claude-*",)), tenant_only_mini):
        listed = r.reachable(principal)
        for name in ("gpt-4o-mini", "claude-haiku", "echo", "nothing"):
            try:
                plan = r.plan(name, None, principal)
            except (PermissionDenied, NotFound):
                assert name not in listed, (principal.models, name)
            else:
                assert listed[name] == names(plan) or sorted(listed[name]) == sorted(names(plan))
    assert sorted(r.reachable(who(models=("echo",)))) == ["echo", "gpt-4o-mini"]
    # a key's own model list counts the same way (Principal.may_use)
    key_only_haiku = Principal(
        tenant="acme", key_id="k2", role="user", models=None, key_models=("claude-haiku",)
    )
    assert sorted(r.reachable(key_only_haiku)) == ["claude-haiku", "gpt-4o-mini"]
    # with no route in the way, the 403 names the deployment too
    with pytest.raises(PermissionDenied) as info:
        r.plan("echo", None, who(models=("claude-*",)))
    assert "do not include 'echo'" in info.value.message


def test_models_endpoint_lists_only_what_routing_serves(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from gateway.app import create_app
    from gateway.settings import Settings

    routes = tmp_path / "routes.yaml"
    routes.write_text(REROUTED)
    digest = hashlib.sha256(b"sk-test-mini").hexdigest()
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(
        f"tenants:\n  acme:\n    models: [gpt-4o-mini]\n    keys:\n      - {{id: k1, sha256: '{digest}'}}\n"
    )
    settings = Settings(routes_path=str(routes), budgets_path=str(budgets))
    with TestClient(create_app(settings)) as client:
        auth = {"authorization": "Bearer sk-test-mini"}
        listed = client.get("/v1/models", headers=auth).json()
        assert [m["id"] for m in listed["data"]] == []
        refused = client.post(
            "/v1/chat/completions",
            headers=auth,
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert refused.status_code == 403
        assert "claude-haiku" in refused.json()["error"]["message"]
        assert client.get("/v1/models/gpt-4o-mini", headers=auth).status_code == 404
