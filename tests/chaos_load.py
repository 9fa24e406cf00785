"""Load from several tenants against several gateway processes while a test breaks Redis, and the money
checks afterwards: recorded spend == the sum of the x-gateway-cost-usd of the answers received, and
nothing left reserved once in-flight work has ended."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal

import httpx
from conftest import sha
from replicas import ADMIN_KEY, Replica


def budgets(tenants: list[str]) -> str:
    lines = ["tenants:"]
    for t in tenants:
        lines += [
            f"  {t}:",
            "    budget: {usd: 1000, period: daily}",
            "    limits: {rpm: 1000000}",
            "    keys:",
            f'      - {{id: {t}-1, sha256: "{sha(key_of(t))}", role: user}}',
        ]
    return "\n".join(lines) + "\n"


def key_of(tenant: str) -> str:
    return f"sk-chaos-{tenant}"


ROUTES = """
providers:
  local: {type: mock, latency_ms: 20}
defaults: {store_failure: closed}
models:
  mock-chat: {provider: local, price: {input_per_mtok: 2.0, output_per_mtok: 4.0}}
routes: []
"""


@dataclass(frozen=True, slots=True)
class Answer:
    tenant: str
    started: float
    """monotonic"""
    latency_s: float
    status: int
    cost: Decimal


@dataclass
class Load:
    """``concurrency`` clients in a background thread, round-robin over replicas and tenants, until
    ``stop()``."""

    replicas: list[Replica]
    tenants: list[str]
    concurrency: int = 8
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the load did not stop"
        return self.answers

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(self._client(client, i) for i in range(self.concurrency)))

    async def _client(self, client: httpx.AsyncClient, n: int) -> None:
        i = n
        while not self._stop.is_set():
            replica = self.replicas[i % len(self.replicas)]
            tenant = self.tenants[i % len(self.tenants)]
            i += self.concurrency
            body = {
                "model": "mock-chat",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"q{i}"}],
            }
            started = time.monotonic()
            try:
                r = await client.post(
                    replica.url + "/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {key_of(tenant)}"},
                )
                status, cost = r.status_code, Decimal(r.headers.get("x-gateway-cost-usd", "0"))
            except httpx.TransportError:
                status, cost = 0, Decimal(0)  # no answer at all: nothing was received, nothing is owed
            self.answers.append(Answer(tenant, started, time.monotonic() - started, status, cost))


def spend(replica: Replica, tenant: str) -> tuple[Decimal, Decimal]:
    """(spent, reserved) USD of a tenant, as the store has them."""
    r = httpx.get(
        replica.url + "/admin/spend",
        params={"tenant": tenant},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    r.raise_for_status()
    body = r.json()
    return Decimal(str(body["spent_usd"])), Decimal(str(body["reserved_usd"]))


def settled(replica: Replica, tenants: list[str], within: float) -> dict[str, tuple[Decimal, Decimal]]:
    """Each tenant's (spent, reserved) once nothing is reserved and spend has stopped moving (queued
    settlements are re-sent every second), or as it is after ``within`` seconds."""
    deadline = time.monotonic() + within
    last: dict[str, tuple[Decimal, Decimal]] = {}
    while True:
        try:
            now = {t: spend(replica, t) for t in tenants}
        except httpx.HTTPError:
            now = {}  # the store is still unavailable: try again
        if now and now == last and all(reserved == 0 for _, reserved in now.values()):
            return now
        if time.monotonic() > deadline:
            return now or last
        last = now
        time.sleep(1.5)


def report(name: str, answers: list[Answer], recorded: Decimal, disrupted_at: float) -> dict[str, float]:
    """Print the figures; return them for the assertions."""
    received = sum((a.cost for a in answers), Decimal(0))
    failed = [a for a in answers if a.status != 200]
    after = [a for a in answers if a.started >= disrupted_at]
    first_failure = min((a.started for a in after if a.status != 200), default=None)
    last_failure_end = max((a.started + a.latency_s for a in after if a.status != 200), default=None)
    recover_s = (last_failure_end - first_failure) if first_failure is not None and last_failure_end else 0.0
    figures = {
        "answers": len(answers),
        "ok": len(answers) - len(failed),
        "failed": len(failed),
        "received_usd": float(received),
        "recorded_usd": float(recorded),
        "max_latency_s": max(a.latency_s for a in answers),
        "time_to_recover_s": recover_s,
    }
    statuses: dict[int, int] = {}
    for a in answers:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    print(
        f"\n{name}: {figures['answers']} answers {statuses}; recorded spend {recorded} vs sum of costs "
        f"received {received}; max latency {figures['max_latency_s']:.3f}s; time to recover "
        f"{recover_s:.2f}s (first failure to last failed answer)"
    )
    return figures
