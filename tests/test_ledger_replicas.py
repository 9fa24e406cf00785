"""The ledger adds up: after a mixed run (chat, streams, embeddings, cache hits, failures, clients
hanging up), the ledger's sum per tenant equals the store's spend and the cost every client was told.

* 4 replicas sharing one redis-server, with one Postgres on 127.0.0.1 as the ledger
  (``GATEWAY_LEDGER_URL``), the store's spend read from Redis itself;
* 1 process without Redis, with the default ledger (SQLite beside budgets.yaml), its spend from
  ``/admin/spend``.

The upstream is an OpenAI-compatible server on loopback (a slow stream, so a client can hang up in the
middle); the clients are the openai SDK, in threads. Marked slow: real processes. Run with ``-s`` for
the figures.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
import redis
from conftest import KEY_ACME, KEY_GLOBEX, LiveServer, sha
from ledger_pg import Postgres
from replicas import ADMIN_KEY, Replica
from sqlalchemy import create_engine, func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from upstreams import chat_body, embeddings_body, sse, stream_chunks

from gateway.ledger.schema import ledger

pytestmark = pytest.mark.slow

KEY_ACME_2 = "sk-test-acme-two"
NANO = Decimal(1_000_000_000)
BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 1000, period: total}}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
      - {{id: acme-2, sha256: "{sha(KEY_ACME_2)}", role: user}}
  globex:
    budget: {{usd: 1000, period: total}}
    keys:
      - {{id: globex-1, sha256: "{sha(KEY_GLOBEX)}", role: user}}
"""


def routes(upstream: str) -> str:
    # "odd" has a price whose costs are not whole nano-dollars: settlement rounds each up
    return f"""
providers:
  up:   {{type: openai, base_url: "{upstream}/ok/v1", api_key: sk-up}}
  down: {{type: openai, base_url: "{upstream}/down/v1", api_key: sk-up}}
defaults:
  retry: {{attempts: 1}}
models:
  chat:   {{provider: up, price: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}}}
  odd:    {{provider: up, price: {{input_per_mtok: 0.00123, output_per_mtok: 0.0457}}}}
  embed:  {{provider: up, price: {{input_per_mtok: 0.02, output_per_mtok: 0}}}}
  broken: {{provider: down, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
routes:
  - name: cached
    match: {{model: cached}}
    targets: [{{model: chat}}]
    cache: {{ttl_s: 300}}
"""


WORDS = [f" w{i}" for i in range(20)]


class Upstream:
    def __init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/ok/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/ok/v1/embeddings", self.embed, methods=["POST"]),
                Route("/down/v1/chat/completions", self.down, methods=["POST"]),
            ]
        )

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse(chat_body(body["model"]))
        include = (body.get("stream_options") or {}).get("include_usage") is True
        chunks = stream_chunks(body["model"], WORDS, usage=include)

        async def frames() -> AsyncIterator[bytes]:
            for c in chunks:
                yield sse(c)
                await asyncio.sleep(0.01)  # slow enough for a client to hang up in the middle
            yield sse("[DONE]")

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def embed(self, request: Request) -> Response:
        return JSONResponse(embeddings_body(await request.json()))

    async def down(self, request: Request) -> Response:
        error = {"message": "upstream is down", "type": "server_error", "param": None, "code": None}
        return JSONResponse({"error": error}, status_code=500)


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    server = LiveServer(Upstream().app).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    yield pg
    pg.stop()


@dataclass
class Seen:
    """What the clients saw: every request id, and the costs they were told (by tenant)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: dict[str, str] = field(default_factory=dict)  # request id -> tenant
    costs: dict[str, Decimal] = field(default_factory=dict)  # request id -> cost told
    kinds: Counter[str] = field(default_factory=Counter)

    def add(self, tenant: str, kind: str, request_id: str, cost: str | None) -> None:
        with self.lock:
            self.ids[request_id] = tenant
            self.kinds[kind] += 1
            if cost is not None:
                self.costs[request_id] = Decimal(cost)


KEYS = {KEY_ACME: "acme", KEY_ACME_2: "acme", KEY_GLOBEX: "globex"}
KINDS = ["chat", "odd", "cached", "stream", "embed", "broken", "hangup"]


def one(base_url: str, key: str, kind: str, seen: Seen, rng: random.Random) -> None:
    tenant = KEYS[key]
    user = rng.choice(["alice", "bob", None])
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": f"hello {rng.randrange(1000)}"}]
    extra = {"user": user} if user else {}
    with client:
        if kind in ("chat", "odd", "cached"):
            model = kind if kind != "cached" else "cached"
            if kind == "cached":  # few distinct prompts: most are hits
                messages = [{"role": "user", "content": f"cached {rng.randrange(3)}"}]
            raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, **extra)
            seen.add(tenant, kind, raw.headers["x-request-id"], raw.headers["x-gateway-cost-usd"])
        elif kind == "embed":
            raw_e = client.embeddings.with_raw_response.create(model="embed", input=["a b c", "d e"], **extra)
            seen.add(tenant, kind, raw_e.headers["x-request-id"], raw_e.headers["x-gateway-cost-usd"])
        elif kind == "broken":
            try:
                client.chat.completions.create(model="broken", messages=messages, **extra)
            except openai.APIStatusError as err:
                seen.add(tenant, kind, err.response.headers["x-request-id"], None)
            else:
                raise AssertionError("the broken deployment answered")
        else:
            with client.chat.completions.with_streaming_response.create(
                model="chat",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **extra,
            ) as response:
                request_id = response.headers["x-request-id"]
                cost = None
                for n, line in enumerate(response.iter_lines()):
                    if kind == "hangup" and n >= 4:
                        break  # the client goes away mid-stream; the gateway bills what was sent
                    if line.startswith("data: {") and '"x_gateway"' in line:
                        cost = json.loads(line[6:])["x_gateway"]["cost_usd"]
                if kind == "stream":
                    assert cost is not None
                seen.add(tenant, kind, request_id, cost if kind == "stream" else None)


def run_mix(urls: list[str], per_thread: int, threads: int = 4) -> Seen:
    seen = Seen()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        try:
            for i in range(per_thread):
                key = list(KEYS)[(n + i) % len(KEYS)]
                one(urls[(n + i) % len(urls)], key, KINDS[(n * 3 + i) % len(KINDS)], seen, rng)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    assert not errors, errors
    return seen


def ledger_sums(url: str) -> tuple[dict[str, int], set[str], dict[str, int]]:
    """Per tenant cost in nano-USD, every request id, and each id's cost."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        sums = dict(
            conn.execute(
                select(ledger.c.tenant, func.sum(ledger.c.cost_nano)).group_by(ledger.c.tenant)
            ).all()
        )
        rows = dict(conn.execute(select(ledger.c.request_id, ledger.c.cost_nano)).all())
    engine.dispose()
    return {t: int(v) for t, v in sums.items()}, set(rows), rows


def check(seen: Seen, url: str, store_spend: dict[str, int], label: str) -> None:
    sums, ids, rows = ledger_sums(url)
    assert set(seen.ids) <= ids  # every request the clients made has its row
    assert len(ids) == len(seen.ids)
    for tenant in ("acme", "globex"):
        told = [rid for rid, t in seen.ids.items() if t == tenant and rid in seen.costs]
        told_nano = sum(math.ceil(seen.costs[rid] * NANO) for rid in told)
        assert sum(rows[rid] for rid in told) == told_nano  # each client's cost, to the nano-dollar
        assert sums[tenant] == store_spend[tenant], (label, tenant)  # the ledger is the store's spend
        print(
            f"{label} {tenant}: {sum(1 for t in seen.ids.values() if t == tenant)} requests, ledger "
            f"{Decimal(sums[tenant]) / NANO} USD == store {Decimal(store_spend[tenant]) / NANO} USD; "
            f"told {len(told)} clients {Decimal(told_nano) / NANO} USD"
        )
    print(f"{label} mix: {dict(seen.kinds)}")


def test_four_replicas_with_postgres_ledger(
    tmp_path: Path, redis_url: str, upstream_url: str, postgres: Postgres
) -> None:
    (tmp_path / "routes.yaml").write_text(routes(upstream_url))
    (tmp_path / "budgets.yaml").write_text(BUDGETS)
    env = {"GATEWAY_LEDGER_URL": postgres.url}
    started = time.monotonic()
    replicas = [
        Replica(
            tmp_path / "routes.yaml", tmp_path / "budgets.yaml", redis_url, tmp_path / f"r{i}.log", env=env
        )
        for i in range(4)
    ]
    try:
        for r in replicas:
            r.wait_ready()
        seen = run_mix([r.url for r in replicas], per_thread=21)
        report = httpx.get(
            replicas[0].url + "/admin/ledger",
            params={"tenant": "acme", "group_by": "key,day", "format": "csv"},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert report.status_code == 200
    finally:
        for r in replicas:
            r.stop()  # graceful: settlements reach Redis, rows reach Postgres
    r = redis.Redis.from_url(redis_url)
    spend = {t: int(r.get(f"gw:{{{t}}}:spent:t:0") or 0) for t in ("acme", "globex")}
    r.close()
    check(seen, postgres.url, spend, "4 replicas, Postgres")
    assert seen.kinds["cached"] and seen.kinds["hangup"] and seen.kinds["broken"]
    print(f"run took {time.monotonic() - started:.1f} s\n{report.text}")


def test_one_process_with_the_default_sqlite_ledger(tmp_path: Path, upstream_url: str) -> None:
    (tmp_path / "routes.yaml").write_text(routes(upstream_url))
    (tmp_path / "budgets.yaml").write_text(BUDGETS)
    gateway = Replica(tmp_path / "routes.yaml", tmp_path / "budgets.yaml", "", tmp_path / "one.log")
    try:
        gateway.wait_ready()
        seen = run_mix([gateway.url], per_thread=14)
        gateway.stop()  # the ledger's last rows are written at shutdown
        gateway = Replica(tmp_path / "routes.yaml", tmp_path / "budgets.yaml", "", tmp_path / "two.log")
        gateway.wait_ready()  # restarted: spend from the state file
        spend = {}
        for tenant in ("acme", "globex"):
            answer = httpx.get(
                gateway.url + "/admin/spend",
                params={"tenant": tenant},
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
            ).json()
            spend[tenant] = int(Decimal(str(answer["spent_usd"])) * NANO)
    finally:
        gateway.stop()
    url = f"sqlite:///{tmp_path}/.gateway/ledger.sqlite3"
    check(seen, url, spend, "1 process, SQLite")
