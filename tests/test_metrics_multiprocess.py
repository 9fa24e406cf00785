"""``/metrics`` is right under several uvicorn workers: prometheus-client multiprocess mode.

One ``python -m gateway serve --workers 2`` process (with the real redis-server the gateway needs for
more than one worker) answers known requests from two tenants over fresh connections; every scrape,
whichever worker answers it, must then show the totals of the whole server.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from conftest import sha
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer
from replicas import Replica

pytestmark = pytest.mark.slow

KEYS = {"acme": "sk-mp-acme-secret", "globex": "sk-mp-globex-secret"}
WRONG_KEY = "sk-mp-wrong-secret"
UNKNOWN_MODEL = "no-such-model-7f3a9c"
PRICE_IN, PRICE_OUT = Decimal(2), Decimal(4)

ROUTES = """
providers:
  local: {type: mock, latency_ms: 20}
models:
  mock-chat: {provider: local, price: {input_per_mtok: 2, output_per_mtok: 4}}
routes: []
"""

BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 100, period: daily}}
    keys:
      - {{id: acme-1, sha256: "{sha(KEYS["acme"])}", role: user}}
  globex:
    keys:
      - {{id: globex-1, sha256: "{sha(KEYS["globex"])}", role: user}}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Replica, Path]]:
    redis = RedisServer().start()
    prom_dir = tmp_path / "prom"
    (tmp_path / "routes.yaml").write_text(ROUTES)
    (tmp_path / "budgets.yaml").write_text(BUDGETS)
    replica = Replica(
        tmp_path / "routes.yaml",
        tmp_path / "budgets.yaml",
        redis.url,
        tmp_path / "gateway.log",
        workers=2,
        env={"PROMETHEUS_MULTIPROC_DIR": str(prom_dir)},
    )
    try:
        replica.wait_ready()
        yield replica, prom_dir
    finally:
        replica.stop()
        redis.stop()


async def _one(url: str, key: str, model: str, n: int) -> httpx.Response:
    # A client per request: a fresh connection, which either worker may accept.
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": model, "messages": [{"role": "user", "content": f"question number {n} " * n}]},
        )


def _requests_by_worker(prom_dir: Path) -> dict[int, float]:
    """gateway_requests_total per worker pid, read from each worker's own file."""
    served: dict[int, float] = {}
    for path in glob.glob(str(prom_dir / "counter_*.db")):
        match = re.search(r"counter_(\d+)\.db$", path)
        assert match is not None
        total = sum(
            s.value
            for family in MultiProcessCollector.merge([path])
            for s in family.samples
            if s.name == "gateway_requests_total"
        )
        served[int(match.group(1))] = total
    return served


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def _tokens(samples: list[tuple[dict[str, str], float]], tenant: str, kind: str) -> float:
    return sum(
        v
        for labels, v in samples
        if labels["tenant"] == tenant and labels["model"] == "mock-chat" and labels["kind"] == kind
    )


def test_metrics_add_up_across_two_workers(server: tuple[Replica, Path]) -> None:
    replica, prom_dir = server
    sent = {"acme": 0, "globex": 0}
    prompt_tokens = {"acme": 0, "globex": 0}
    output_tokens = {"acme": 0, "globex": 0}
    cost = {"acme": Decimal(0), "globex": Decimal(0)}

    async def batch(start: int) -> None:
        jobs = [
            _one(replica.url, KEYS[tenant], "mock-chat", start + i)
            for i in range(12)
            for tenant in ("acme", "globex")
        ]
        tenants = [tenant for _ in range(12) for tenant in ("acme", "globex")]
        for tenant, response in zip(tenants, await asyncio.gather(*jobs), strict=True):
            assert response.status_code == 200, response.text
            usage = response.json()["usage"]
            sent[tenant] += 1
            prompt_tokens[tenant] += usage["prompt_tokens"]
            output_tokens[tenant] += usage["completion_tokens"]
            cost[tenant] += (
                usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT
            ) / 1_000_000

    # Concurrent batches on fresh connections until both workers have served some (bounded).
    for round_ in range(10):
        asyncio.run(batch(round_ * 12 + 1))
        if len([pid for pid, n in _requests_by_worker(prom_dir).items() if n > 0]) >= 2:
            break
    served = _requests_by_worker(prom_dir)
    assert len([n for n in served.values() if n > 0]) >= 2, f"one worker served everything: {served}"

    refused = asyncio.run(_one(replica.url, WRONG_KEY, "mock-chat", 1))
    assert refused.status_code == 401
    unknown = asyncio.run(_one(replica.url, KEYS["acme"], UNKNOWN_MODEL, 1))
    assert unknown.status_code == 404

    for _ in range(6):  # any worker may answer a scrape: each must show the whole server's totals
        with httpx.Client(base_url=replica.url, timeout=5) as client:  # fresh connection per scrape
            text = client.get("/metrics").text
        requests = _samples(text, "gateway_requests_total")
        tokens = _samples(text, "gateway_tokens_total")
        spend = _samples(text, "gateway_cost_usd_total")
        for tenant in ("acme", "globex"):
            ok = [
                v
                for labels, v in requests
                if labels["tenant"] == tenant and labels["model"] == "mock-chat" and labels["status"] == "200"
            ]
            assert sum(ok) == sent[tenant]

            # "input" excludes cached tokens, "cached" holds them: together the prompt tokens.
            assert (
                _tokens(tokens, tenant, "input") + _tokens(tokens, tenant, "cached") == prompt_tokens[tenant]
            )
            assert _tokens(tokens, tenant, "output") == output_tokens[tenant]
            spent = sum(v for labels, v in spend if labels == {"tenant": tenant, "model": "mock-chat"})
            assert abs(spent - float(cost[tenant])) < 1e-9
        refused_count = [
            v
            for labels, v in requests
            if (labels["tenant"], labels["model"], labels["status"]) == ("none", "none", "401")
        ]
        assert sum(refused_count) == 1
        assert 0 < _samples(text, "gateway_budget_remaining_usd")[0][1] < 100
        # Bounded labels: no request ids, key secrets or raw model strings from clients.
        values = [
            v for s in text_string_to_metric_families(text) for x in s.samples for v in x.labels.values()
        ]
        for value in values:
            assert "req_" not in value
            assert UNKNOWN_MODEL not in value
            assert not any(secret in value for secret in (*KEYS.values(), WRONG_KEY))
        assert UNKNOWN_MODEL not in text and WRONG_KEY not in text
    assert os.listdir(prom_dir)  # the workers wrote to the directory the test chose
