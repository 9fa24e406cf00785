"""Limits and budgets hold exactly across replicas: 4 gateway processes, one real redis-server.

Marked slow: they start real processes. Figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import KEY_ACME, sha
from replicas import ADMIN_KEY, Replica, start_replicas

pytestmark = pytest.mark.slow

PROMPT = "Summarise the quarterly report for the finance team in a few careful sentences please. " * 3

ROUTES = """
providers:
  local: {type: mock, latency_ms: 30}
models:
  mock-chat:
    provider: local
    price: {input_per_mtok: 2.0, output_per_mtok: 4.0}
    max_output_tokens: 400
routes: []
"""


def budgets(tenant: str) -> str:
    return f"""
tenants:
  acme:
    {tenant}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
"""


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str):  # type: ignore[no-untyped-def]
    started: list[Replica] = []

    def make(tenant: str, n: int = 4, routes: str = ROUTES) -> list[Replica]:
        (tmp_path / "routes.yaml").write_text(routes)
        (tmp_path / "budgets.yaml").write_text(budgets(tenant))
        replicas = start_replicas(n, tmp_path / "routes.yaml", tmp_path / "budgets.yaml", redis_url, tmp_path)
        started.extend(replicas)
        return replicas

    yield make
    for r in started:
        r.stop()


async def fire(
    replicas: list[Replica], n: int, *, stream_every: int = 2, max_tokens: int = 120
) -> list[dict]:
    """n concurrent requests spread over the replicas; half of them streamed."""
    limits = httpx.Limits(max_connections=400)
    in_flight = asyncio.Semaphore(120)  # 2 cores run the 4 replicas, Redis and this client
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(i: int) -> dict:
            async with in_flight:
                return await send(i)

        async def send(i: int) -> dict:
            replica = replicas[i % len(replicas)]
            stream = i % stream_every == 0
            body = {
                "model": "mock-chat",
                "max_tokens": max_tokens,
                "stream": stream,
                "messages": [{"role": "user", "content": f"{i} {PROMPT}"}],
            }
            if stream:
                body["stream_options"] = {"include_usage": True}
            r = await client.post(
                replica.url + "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {KEY_ACME}"},
            )
            out: dict = {"status": r.status_code, "stream": stream, "headers": r.headers}
            if r.status_code == 200 and stream:
                chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
                out["usage"] = chunks[-1]["usage"]
                assert r.text.rstrip().endswith("data: [DONE]")
            elif r.status_code == 200:
                out["usage"] = r.json()["usage"]
            else:
                out["error"] = r.json()["error"]
            return out

        return await asyncio.gather(*(one(i) for i in range(n)))


def cost(usage: dict) -> float:
    return usage["prompt_tokens"] * 2.0 / 1e6 + usage["completion_tokens"] * 4.0 / 1e6


def admin_spend(replica: Replica) -> dict:
    r = httpx.get(
        replica.url + "/admin/spend",
        params={"tenant": "acme"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_budget_is_never_exceeded_across_four_replicas(cluster) -> None:  # type: ignore[no-untyped-def]
    budget = 0.01
    replicas = cluster(f"budget: {{usd: {budget}, period: daily}}")
    # A request's actual cost is ~$0.0006; the budget admits ~16: fire 15x that, half of them streams.
    results = asyncio.run(fire(replicas, 240))
    statuses = Counter(r["status"] for r in results)
    admitted = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] != 200]
    total = sum(cost(r["usage"]) for r in admitted)
    time.sleep(0.5)  # settlements run after the responses
    spend = admin_spend(replicas[0])
    print(
        f"\nbudget ${budget}: {len(admitted)} admitted, {len(refused)} refused {dict(statuses)}; "
        f"settled ${total:.6f}, store spent ${spend['spent_usd']:.6f}, overspend "
        f"${max(0.0, total - budget):.6f}"
    )
    assert admitted and refused
    odd = [
        (r["status"], r["error"])
        for r in refused
        if r["status"] != 429 or r["error"]["code"] != "budget_exceeded"
    ]
    assert not odd, odd[:3]
    assert all(r["status"] == 429 and r["error"]["code"] == "budget_exceeded" for r in refused)
    assert all(r["headers"]["x-should-retry"] == "false" for r in refused)
    assert total <= budget
    assert spend["spent_usd"] == pytest.approx(total, abs=1e-8)
    assert spend["reserved_usd"] == 0


def test_rpm_limit_holds_exactly_across_four_replicas(cluster) -> None:  # type: ignore[no-untyped-def]
    replicas = cluster("limits: {rpm: 25}")
    results = asyncio.run(fire(replicas, 250, max_tokens=20))
    statuses = Counter(r["status"] for r in results)
    print(f"\nrpm 25: {dict(statuses)} from 250 requests (120 at a time) over 4 replicas")
    assert statuses[200] == 25
    refused = [r for r in results if r["status"] != 200]
    assert all(
        r["error"]["code"] == "rate_limit_exceeded" and int(r["headers"]["retry-after"]) >= 1 for r in refused
    )


def test_revoked_key_is_refused_by_every_replica_within_a_second(cluster) -> None:  # type: ignore[no-untyped-def]
    replicas = cluster("", n=2)
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    created = httpx.post(
        replicas[0].url + "/admin/keys", json={"tenant": "acme", "id": "runtime-1"}, headers=admin
    )
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    body = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}
    deadline = time.monotonic() + 1.0
    while True:  # the other replica learns of the new key by polling
        r = httpx.post(
            replicas[1].url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"}
        )
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 200
    listed = httpx.get(replicas[1].url + "/admin/keys", params={"tenant": "acme"}, headers=admin).json()[
        "data"
    ]
    assert {k["id"] for k in listed} == {"acme-1", "runtime-1"}
    assert all("sha256" not in k and "secret" not in k for k in listed)
    assert httpx.delete(replicas[0].url + "/admin/keys/runtime-1", headers=admin).status_code == 200
    revoked_at = time.monotonic()
    for replica in replicas:
        while True:
            r = httpx.post(
                replica.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"}
            )
            if r.status_code == 401:
                break
            assert time.monotonic() - revoked_at < 1.0, "a replica still accepted a revoked key after 1 s"
            time.sleep(0.02)
    print(f"\nrevocation seen by both replicas after {time.monotonic() - revoked_at:.3f}s")


def test_killed_replica_releases_its_reservations_after_the_lease(cluster) -> None:  # type: ignore[no-untyped-def]
    routes = ROUTES.replace("latency_ms: 30", "latency_ms: 5000").replace(
        "routes: []", "defaults: {timeout_s: 2}\nroutes: []"
    )
    replicas = cluster("budget: {usd: 0.01, period: daily}", n=2, routes=routes)
    victim, survivor = replicas

    async def hold() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {
                "model": "mock-chat",
                "max_tokens": 400,
                "messages": [{"role": "user", "content": PROMPT}],
            }
            await asyncio.gather(
                *(
                    client.post(
                        victim.url + "/v1/chat/completions",
                        json=body,
                        headers={"authorization": f"Bearer {KEY_ACME}"},
                    )
                    for _ in range(8)
                ),
                return_exceptions=True,
            )

    async def kill_mid_flight() -> None:
        task = asyncio.create_task(hold())
        await asyncio.sleep(1.0)
        assert admin_spend(survivor)["reserved_usd"] > 0
        victim.kill()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(kill_mid_flight())
    held = admin_spend(survivor)
    assert held["reserved_usd"] > 0, "reservations of the killed replica are still held"
    # The lease is max(2 x timeout_s, timeout_s + 10 s) = 12 s here; the next admission reaps it.
    deadline = time.monotonic() + 20
    while admin_spend(survivor)["reserved_usd"] > 0:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.5)
    print(f"\nheld ${held['reserved_usd']:.6f} until the lease expired")
    assert admin_spend(survivor)["remaining_usd"] == pytest.approx(0.01)
