"""Circuit breakers and the response cache act as one gateway across replicas: 3 gateway processes, one
real redis-server, one real upstream on loopback.

test_replicas.py proves limits, budgets and key revocation the same way. The upstream here is an
OpenAI-compatible server in this process, one path per deployment, counting the calls each gets: the
replicas are separate processes and reach it over HTTP like any provider, so the counts show which
replica stopped calling what. The client is the real ``openai`` SDK.

Marked slow: they start real processes. Figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis
from conftest import KEY_ACME, KEY_GLOBEX, LiveServer, sha
from replicas import Replica, start_replicas
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from upstreams import chat_body

pytestmark = pytest.mark.slow

FAILURES = 3
RESET_S = 5.0
"""Long enough for the open-circuit checks below to finish before the half-open probe on a busy machine."""
CONVERGE_S = 1.5
"""Replicas read the shared breaker records every 0.5 s; a second and a half is ample on 2 busy cores."""

BUDGETS = f"""
tenants:
  acme:
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
  globex:
    keys:
      - {{id: globex-1, sha256: "{sha(KEY_GLOBEX)}", role: user}}
"""


def routes(upstream: str) -> str:
    return f"""
providers:
  up-flaky:  {{type: openai, base_url: "{upstream}/flaky/v1", api_key: sk-up}}
  up-backup: {{type: openai, base_url: "{upstream}/backup/v1", api_key: sk-up}}
  up-steady: {{type: openai, base_url: "{upstream}/steady/v1", api_key: sk-up}}
defaults:
  retry: {{attempts: 1}}
  breaker: {{failures: {FAILURES}, reset_s: {RESET_S}}}
models:
  flaky:  {{provider: up-flaky, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
  backup: {{provider: up-backup, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
  steady: {{provider: up-steady, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
routes:
  - name: resilient
    match: {{model: chat}}
    targets: [{{model: flaky}}]
    fallbacks: [backup]
  - name: cached
    match: {{model: cached}}
    targets: [{{model: steady}}]
    cache: {{ttl_s: 300}}
"""


class Upstream:
    """OpenAI-compatible chat at ``/<deployment>/v1/chat/completions``; a deployment in ``failing``
    answers 500. ``hits`` counts the calls per deployment, failed ones included."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.failing: set[str] = set()
        self.app = Starlette(routes=[Route("/{name}/v1/chat/completions", self.chat, methods=["POST"])])
        self.url = ""

    async def chat(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        self.hits[name] += 1
        if name in self.failing:
            error = {"message": "upstream is down", "type": "server_error", "param": None, "code": None}
            return JSONResponse({"error": error}, status_code=500)
        body = await request.json()
        answer = chat_body(body["model"], content=f"answer {self.hits[name]} from {name}")
        answer["id"] = f"chatcmpl-{name}-{self.hits[name]}"
        return JSONResponse(answer)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    server = LiveServer(up.app).start()
    up.url = server.url
    yield up
    server.stop()


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str, upstream: Upstream) -> Iterator[list[Replica]]:
    (tmp_path / "routes.yaml").write_text(routes(upstream.url))
    (tmp_path / "budgets.yaml").write_text(BUDGETS)
    started = start_replicas(3, tmp_path / "routes.yaml", tmp_path / "budgets.yaml", redis_url, tmp_path)
    yield started
    for r in started:
        r.stop()


def ask(
    replica: Replica, model: str, content: str, *, key: str = KEY_ACME, **extra: object
) -> tuple[httpx.Headers, str]:
    """One chat completion through a replica with the openai SDK: the response headers and the answer."""
    client = openai.OpenAI(base_url=replica.url + "/v1", api_key=key, max_retries=0)
    with client:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": content}],
            **extra,  # type: ignore[arg-type]
        )
    return raw.headers, raw.parse().choices[0].message.content or ""


def circuit_state(replica: Replica, deployment: str) -> float | None:
    """``gateway_circuit_state{deployment}`` from the replica's /metrics: 0 closed, 1 half-open, 2 open."""
    text = httpx.get(replica.url + "/metrics").text
    match = re.search(rf'^gateway_circuit_state\{{deployment="{deployment}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else None


def wait_for(check: Callable[[], bool], within: float, what: str) -> float:
    """Poll ``check`` until it holds; the seconds it took. Fails after ``within`` seconds."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"{what}: not within {within}s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_circuit_opened_by_one_replica_is_open_on_all(upstream: Upstream, replicas: list[Replica]) -> None:
    first, *others = replicas
    # Every replica has served the route while it was healthy, as behind a load balancer. A replica
    # starts following a deployment's shared record on its first call to it (breakers are made on first
    # use), so a freshly started one would still make that one call.
    for r in replicas:
        assert ask(r, "chat", "warm up")[0]["x-gateway-model"] == "flaky"
    assert upstream.hits["flaky"] == 3

    upstream.failing.add("flaky")
    for i in range(FAILURES):  # only the first replica sees the failures
        h, _ = ask(first, "chat", f"fail {i}")
        assert (h["x-gateway-model"], h["x-gateway-attempts"]) == ("backup", "2")
    opened = time.monotonic()
    h, _ = ask(first, "chat", "skipped")
    assert (h["x-gateway-model"], h["x-gateway-attempts"]) == ("backup", "1"), "first replica did not open"
    failed_calls = upstream.hits["flaky"]
    assert failed_calls == 3 + FAILURES

    # The others never called the failing upstream: they learn the open circuit from Redis alone.
    seen = {}
    for i, r in enumerate(others, start=2):
        wait_for(lambda r=r: circuit_state(r, "flaky") == 2, CONVERGE_S, f"replica {i} sees it open")
        seen[i] = time.monotonic() - opened
    for r in others:
        for n in range(10):
            h, text = ask(r, "chat", f"after open {n}")
            assert (h["x-gateway-model"], h["x-gateway-attempts"]) == ("backup", "1")
            assert "from backup" in text
    checked_by = time.monotonic() - opened
    assert checked_by < RESET_S, "too slow to check before the half-open probe; raise RESET_S"
    assert upstream.hits["flaky"] == failed_calls, "a replica still called the failing upstream"
    print(
        f"\nbreaker: opened on replica 1 after {FAILURES} failures; open on replicas 2, 3 after "
        f"{seen[2]:.3f}s, {seen[3]:.3f}s; 20 requests on replicas 2-3 served "
        f"by the fallback with 0 calls to the failing upstream (its calls: {failed_calls}, 3 of them warm-up)"
    )

    # Recovered, and reset_s passed: one replica's probe closes the circuit for every replica.
    upstream.failing.clear()
    second, third = others
    wait_for(lambda: circuit_state(second, "flaky") == 1, RESET_S + CONVERGE_S, "replica 2 half-open")
    half_open = time.monotonic() - opened
    h, _ = ask(second, "chat", "probe")
    assert (h["x-gateway-model"], h["x-gateway-attempts"]) == ("flaky", "1")
    probed = time.monotonic()
    assert upstream.hits["flaky"] == failed_calls + 1
    closed = {}
    for i, r in ((1, first), (3, third)):
        wait_for(lambda r=r: circuit_state(r, "flaky") == 0, CONVERGE_S, f"replica {i} sees it closed")
        closed[i] = time.monotonic() - probed
    for r in (first, third):
        h, _ = ask(r, "chat", "closed again")
        assert (h["x-gateway-model"], h["x-gateway-attempts"]) == ("flaky", "1")
    assert upstream.hits["flaky"] == failed_calls + 3
    print(
        f"breaker: half-open on replica 2 {half_open:.3f}s after opening (reset_s {RESET_S}); its probe "
        f"succeeded and replicas 1, 3 saw the circuit closed {closed[1]:.3f}s, {closed[3]:.3f}s after it; "
        f"the recovered upstream serves all three again"
    )


def test_an_answer_cached_by_one_replica_is_a_hit_on_all_for_that_tenant_only(
    upstream: Upstream, replicas: list[Replica], redis_url: str
) -> None:
    store = redis.Redis.from_url(redis_url)

    def entries(tenant: str) -> int:
        return len(list(store.scan_iter(match=f"gw:{{{tenant}}}:cache:*")))

    question = "What is the capital of France?"
    first, second, third = replicas
    h, text = ask(first, "cached", question, temperature=0)
    assert h["x-gateway-cache"] == "miss"
    assert float(h["x-gateway-cost-usd"]) > 0
    answer = text
    assert upstream.hits["steady"] == 1
    # The answer is stored after the response went out: wait for it rather than race it.
    stored = wait_for(lambda: entries("acme") == 1, 2.0, "acme's answer stored")

    for r in (second, third):
        h, text = ask(r, "cached", question, temperature=0)
        assert (h["x-gateway-cache"], h["x-gateway-cost-usd"], h["x-gateway-model"]) == ("hit", "0", "steady")
        assert text == answer
    assert upstream.hits["steady"] == 1

    # Another tenant asking the very same thing never gets acme's answer: its own miss, then its own hits.
    h, text = ask(second, "cached", question, key=KEY_GLOBEX, temperature=0)
    assert h["x-gateway-cache"] == "miss"
    assert float(h["x-gateway-cost-usd"]) > 0
    assert text != answer
    assert upstream.hits["steady"] == 2
    wait_for(lambda: entries("globex") == 1, 2.0, "globex's answer stored")
    for r in (first, third):
        h, _ = ask(r, "cached", question, key=KEY_GLOBEX, temperature=0)
        assert (h["x-gateway-cache"], h["x-gateway-cost-usd"]) == ("hit", "0")
    assert upstream.hits["steady"] == 2
    assert (entries("acme"), entries("globex")) == (1, 1)
    store.close()
    print(
        f"\ncache: acme miss on replica 1 (stored in Redis {stored:.3f}s after the response), hits on "
        f"replicas 2, 3 at cost 0; globex miss on replica 2, hits on replicas 1, 3; upstream called "
        f"{upstream.hits['steady']} times for 6 requests, one entry per tenant"
    )
