"""Redis dies under load and comes back: closed policy fails fast and recovers; open policy serves and
writes the spend once Redis is back. A real redis-server is stopped and restarted on the same port."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from conftest import KEY_ACME, sha
from redis_server import RedisServer
from replicas import ADMIN_KEY, start_replicas

pytestmark = pytest.mark.slow

BODY = {"model": "mock-chat", "max_tokens": 50, "messages": [{"role": "user", "content": "hello there"}]}
AUTH = {"authorization": f"Bearer {KEY_ACME}"}


def routes(policy: str) -> str:
    return f"""
providers:
  local: {{type: mock}}
defaults: {{store_failure: {policy}}}
models:
  mock-chat: {{provider: local, price: {{input_per_mtok: 2.0, output_per_mtok: 4.0}}}}
routes: []
"""


BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 100, period: daily}}
    limits: {{rpm: 100000}}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
"""


def setup(tmp_path: Path, policy: str) -> tuple[RedisServer, object]:
    (tmp_path / "routes.yaml").write_text(routes(policy))
    (tmp_path / "budgets.yaml").write_text(BUDGETS)
    server = RedisServer().start()
    (replica,) = start_replicas(1, tmp_path / "routes.yaml", tmp_path / "budgets.yaml", server.url, tmp_path)
    return server, replica


def spent(replica) -> float:  # type: ignore[no-untyped-def]
    r = httpx.get(
        replica.url + "/admin/spend",
        params={"tenant": "acme"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=5,
    )
    assert r.status_code == 200, r.text
    return float(r.json()["spent_usd"])


def test_closed_policy_fails_fast_and_recovers(tmp_path: Path) -> None:
    server, replica = setup(tmp_path, "closed")
    try:
        with httpx.Client(base_url=replica.url, timeout=10) as c:  # type: ignore[attr-defined]
            assert c.post("/v1/chat/completions", json=BODY, headers=AUTH).status_code == 200
            server.stop()
            worst = 0.0
            for _ in range(20):
                started = time.monotonic()
                r = c.post("/v1/chat/completions", json=BODY, headers=AUTH)
                worst = max(worst, time.monotonic() - started)
                assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
            assert worst < 1.0, f"a request took {worst:.2f}s with Redis down"
            assert c.get("/readyz").status_code == 503
            server.start()
            deadline = time.monotonic() + 10
            while c.post("/v1/chat/completions", json=BODY, headers=AUTH).status_code != 200:
                assert time.monotonic() < deadline, "did not recover after Redis came back"
                time.sleep(0.1)
            assert c.get("/readyz").status_code == 200
            print(f"\nclosed: slowest 503 with Redis down {worst * 1000:.0f} ms; recovered by itself")
    finally:
        replica.stop()  # type: ignore[attr-defined]
        server.stop()


def test_open_policy_serves_and_writes_spend_when_redis_returns(tmp_path: Path) -> None:
    server, replica = setup(tmp_path, "open")
    try:
        with httpx.Client(base_url=replica.url, timeout=10) as c:  # type: ignore[attr-defined]
            r = c.post("/v1/chat/completions", json=BODY, headers=AUTH)
            first = float(r.headers["x-gateway-cost-usd"])
            time.sleep(0.3)
            assert spent(replica) == pytest.approx(first)
            server.stop()
            served = 0.0
            for _ in range(10):
                r = c.post("/v1/chat/completions", json=BODY, headers=AUTH)
                assert r.status_code == 200
                served += float(r.headers["x-gateway-cost-usd"])
            server.start()  # an empty Redis: only what the gateway writes back will be there
            deadline = time.monotonic() + 10
            while True:
                try:
                    value = spent(replica)
                except AssertionError:
                    value = -1.0  # store still reconnecting
                if value == pytest.approx(served):
                    break
                assert time.monotonic() < deadline, f"spend not written back: {value} != {served}"
                time.sleep(0.2)
            print(f"\nopen: served 10 requests with Redis down; ${served:.7f} written back once it returned")
    finally:
        replica.stop()  # type: ignore[attr-defined]
        server.stop()
