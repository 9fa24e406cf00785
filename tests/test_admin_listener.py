"""The admin listener and the metrics token (issue 17): ``/admin/*`` and ``/metrics`` off the public port.

Live: ``python -m gateway serve --workers 2 --admin-port`` (a real redis-server behind it), both ports
asked over loopback; and the in-process server for the token alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import BUDGETS, KEY_ACME, GatewayFactory, free_port
from redis_server import RedisServer
from replicas import ADMIN_KEY, Replica

TOKEN = "metrics-token-for-tests"
ROUTES = """
providers:
  local: {type: mock}
models:
  mock-chat: {provider: local, price: {input_per_mtok: 1, output_per_mtok: 2}}
routes: []
"""
CHAT = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def split(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    redis = RedisServer().start()
    (tmp_path / "routes.yaml").write_text(ROUTES)
    (tmp_path / "budgets.yaml").write_text(BUDGETS)
    admin_port = free_port()
    replica = Replica(
        tmp_path / "routes.yaml",
        tmp_path / "budgets.yaml",
        redis.url,
        tmp_path / "gateway.log",
        workers=request.param,
        env={
            "GATEWAY_ADMIN_PORT": str(admin_port),
            "GATEWAY_METRICS_TOKEN": TOKEN,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        },
    )
    try:
        replica.wait_ready()
        yield replica.url, f"http://127.0.0.1:{admin_port}"
    finally:
        replica.stop()
        redis.stop()


@pytest.mark.slow
def test_admin_and_metrics_only_on_the_admin_port(split: tuple[str, str]) -> None:
    public, admin = split
    admin_auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    metrics_auth = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=10, trust_env=False) as http:
        for _ in range(4):  # over a fresh connection each: either worker may take it
            answer = http.post(
                public + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {KEY_ACME}"}
            )
            assert answer.status_code == 200, answer.text
        # the public port: no admin, no metrics, in the API's error format
        for method, path in (("GET", "/metrics"), ("GET", "/admin/keys"), ("GET", "/admin/spend")):
            refused = http.request(method, public + path, headers={**admin_auth, **metrics_auth})
            assert refused.status_code == 404, (path, refused.text)
            assert refused.json()["error"]["message"] == f"Unknown path: {method} {path}"
        # the admin port: metrics behind the token, admin behind the admin key, no proxy endpoints
        assert http.get(admin + "/metrics").status_code == 401
        wrong = http.get(admin + "/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        scrape = http.get(admin + "/metrics", headers=metrics_auth)
        assert scrape.status_code == 200
        assert "gateway_requests_total{" in scrape.text and 'tenant="acme"' in scrape.text
        keys = http.get(admin + "/admin/keys", headers=admin_auth)
        assert keys.status_code == 200, keys.text
        proxied = http.post(
            admin + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {KEY_ACME}"}
        )
        assert proxied.status_code == 404
        assert (
            http.get(admin + "/v1/models", headers={"authorization": f"Bearer {KEY_ACME}"}).status_code == 404
        )
        for base in (public, admin):  # probes on both
            assert http.get(base + "/readyz").status_code == 200
            assert http.get(base + "/healthz").status_code == 200


def test_metrics_token_on_the_single_port(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(ROUTES, metrics_token=TOKEN, admin_key=ADMIN_KEY)
    with httpx.Client(timeout=10, trust_env=False) as http:
        refused = http.get(gw.url + "/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "invalid_request_error"
        assert "GATEWAY_METRICS_TOKEN" in refused.json()["error"]["message"]
        assert http.get(gw.url + "/metrics", headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
        assert (
            http.get(gw.url + "/admin/spend", headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code
            != 404
        )


def test_metrics_open_without_a_token(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(ROUTES)
    assert httpx.get(gw.url + "/metrics", timeout=10, trust_env=False).status_code == 200
