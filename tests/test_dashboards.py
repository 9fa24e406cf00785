"""The shipped Grafana dashboard queries only metrics the gateway exports, under DESIGN.md's names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml
from conftest import KEY_ACME, GatewayFactory
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "gateway.json"
# The metric names DESIGN.md ("Metrics") specifies, as they appear in a scrape.
DESIGN_NAMES = {
    "gateway_requests_total",
    "gateway_tokens_total",
    "gateway_cost_usd_total",
    "gateway_budget_remaining_usd",
    "gateway_request_duration_seconds",
    "gateway_upstream_duration_seconds",
    "gateway_time_to_first_token_seconds",
    "gateway_overhead_seconds",
    "gateway_cache_requests_total",
    "gateway_retries_total",
    "gateway_fallbacks_total",
    "gateway_circuit_state",
    "gateway_budget_overrun_usd_total",
    "gateway_config_reload_total",
}

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}
# Suffixes prometheus-client adds to a family's name in the exposition, by type.
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values(...)`` query) reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", promql)  # string literals (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors, $__rate_interval included
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)", r"\1", text)  # keep the metric only
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text):
        if match.group(1) not in KEYWORDS:
            names.add(match.group(1))
    return names


def exposed_names(exposition: str) -> set[str]:
    """Every sample name a scrape can show, including those of labelled families with no child yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def base_name(name: str) -> str:
    """The DESIGN.md name of a sample name: histogram series drop their suffix, counters keep ``_total``."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


def dashboard() -> dict:  # type: ignore[type-arg]
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def queries() -> list[tuple[str, str]]:
    """(panel title, expression) for every target and template variable."""
    found: list[tuple[str, str]] = []
    for panel in dashboard()["panels"]:
        found += [(panel["title"], target["expr"]) for target in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        found.append((f"${variable['name']}", variable["query"]["query"]))
    return found


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(gateway_overhead_seconds_bucket{x="a b"}[$__rate_interval])))'
        " / on (tenant) group_left sum without (kind) (gateway_tokens_total offset 1d)"
    )
    assert metric_names(expr) == {"gateway_overhead_seconds_bucket", "gateway_tokens_total"}
    assert metric_names("label_values(gateway_requests_total, tenant)") == {"gateway_requests_total"}


def test_every_panel_has_a_query_and_both_rows_exist() -> None:
    panels = dashboard()["panels"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Finance", "Ops"]
    for panel in panels:
        if panel["type"] != "row":
            assert panel.get("targets"), f"panel {panel['title']!r} has no query"
            assert all(t.get("expr") for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_only_exported_metrics(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    headers = {"authorization": f"Bearer {KEY_ACME}"}
    body = {"model": "mock-chat", "messages": [{"role": "user", "content": "hello"}]}
    for _ in range(3):
        assert httpx.post(gw.base_url + "/chat/completions", headers=headers, json=body).status_code == 200
    assert httpx.post(gw.base_url + "/chat/completions", json=body).status_code == 401
    exposed = exposed_names(httpx.get(gw.url + "/metrics").text)
    design = DESIGN_NAMES

    used: set[str] = set()
    for title, expr in queries():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        for name in names:
            assert name in exposed, f"{title}: {name} is not exported by the gateway"
            assert base_name(name) in design, f"{title}: {name} is not a DESIGN.md metric"
        used |= {base_name(n) for n in names}
    # Every DESIGN.md metric is exported, and the finance/ops essentials are on the dashboard.
    assert all(name in exposed or name + "_bucket" in exposed for name in design), design - {
        base_name(n) for n in exposed
    }
    for name in (
        "gateway_cost_usd_total",
        "gateway_budget_remaining_usd",
        "gateway_tokens_total",
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_overhead_seconds",
        "gateway_cache_requests_total",
        "gateway_circuit_state",
    ):
        assert name in used, f"the dashboard does not show {name}"


def test_provisioning_points_at_the_dashboards_and_datasource() -> None:
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    uids = {d["uid"] for d in datasources["datasources"]}
    for panel in dashboard()["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/dashboards.yaml").read_text())
    assert providers["providers"][0]["options"]["path"]
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    job = scrape["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"]
