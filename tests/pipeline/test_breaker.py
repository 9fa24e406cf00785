"""Circuit breakers: pybreaker's state machine driven from async code, shared through a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge
from redis_server import RedisServer

from gateway.config.model import BreakerPolicy
from gateway.config.parse import parse_budgets, parse_routes
from gateway.pipeline.breaker import CLOSED, HALF_OPEN, OPEN, BreakerOpen, BreakerRegistry, Outcome
from gateway.runtime import Shared, build_runtime
from gateway.store.memory import MemoryStore

POLICY = BreakerPolicy(failures=3, reset_s=30)
QUICK = BreakerPolicy(failures=2, reset_s=0.05)


def gauge() -> Gauge:
    return Gauge("gateway_circuit_state", "state", ["deployment"], registry=CollectorRegistry())


def value(g: Gauge, deployment: str) -> float:
    return float(g.labels(deployment)._value.get())


async def until(condition: object, within_s: float = 5.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - the state moves with the clock: no event to wait on
            await asyncio.sleep(0.01)


async def test_opens_after_the_configured_failures_and_skips() -> None:
    g = gauge()
    breaker = BreakerRegistry(g).get("m", POLICY)
    for _ in range(2):
        assert breaker.allow() is False
        breaker.record(Outcome.FAILURE, probe=False)
    assert breaker.state == CLOSED and value(g, "m") == 0
    breaker.record(Outcome.FAILURE, probe=False)
    assert breaker.state == OPEN and value(g, "m") == 2
    with pytest.raises(BreakerOpen) as info:
        breaker.allow()
    assert 29 < info.value.reopen_in_s <= 30


async def test_success_resets_the_count_and_429_is_neutral() -> None:
    breaker = BreakerRegistry(gauge()).get("m", POLICY)
    for outcome in (Outcome.FAILURE, Outcome.FAILURE, Outcome.SUCCESS, Outcome.FAILURE, Outcome.FAILURE):
        breaker.record(outcome, probe=False)
    assert breaker.state == CLOSED, "failures must be consecutive"
    for _ in range(5):
        breaker.record(Outcome.NEUTRAL, probe=False)
    assert breaker.state == CLOSED and breaker.view.counter == 2


async def test_half_open_lets_one_probe_through_then_closes_on_success() -> None:
    g = gauge()
    breaker = BreakerRegistry(g).get("m", QUICK)
    breaker.record(Outcome.FAILURE, probe=False)
    breaker.record(Outcome.FAILURE, probe=False)
    assert breaker.state == OPEN
    await until(lambda: breaker.state == HALF_OPEN)
    assert value(g, "m") == 1
    assert breaker.allow() is True, "the first call after reset_s is the probe"
    with pytest.raises(BreakerOpen):
        breaker.allow()  # one probe at a time
    breaker.record(Outcome.SUCCESS, probe=True)
    assert breaker.state == CLOSED and value(g, "m") == 0
    assert breaker.allow() is False


async def test_a_failed_probe_opens_again() -> None:
    breaker = BreakerRegistry(gauge()).get("m", QUICK)
    breaker.record(Outcome.FAILURE, probe=False)
    breaker.record(Outcome.FAILURE, probe=False)
    await until(lambda: breaker.state == HALF_OPEN)
    assert breaker.allow() is True
    breaker.record(Outcome.FAILURE, probe=True)
    assert breaker.state == OPEN


async def test_a_cancelled_probe_frees_the_slot() -> None:
    breaker = BreakerRegistry(gauge()).get("m", QUICK)
    breaker.record(Outcome.FAILURE, probe=False)
    breaker.record(Outcome.FAILURE, probe=False)
    await until(lambda: breaker.state == HALF_OPEN)
    assert breaker.allow() is True
    breaker.record(Outcome.NEUTRAL, probe=True)
    assert breaker.allow() is True


async def test_policy_follows_a_reload_and_state_survives_it() -> None:
    registry = BreakerRegistry(gauge())
    breaker = registry.get("m", POLICY)
    breaker.record(Outcome.FAILURE, probe=False)
    again = registry.get("m", BreakerPolicy(failures=2, reset_s=30))
    assert again is breaker
    again.record(Outcome.FAILURE, probe=False)
    assert breaker.state == OPEN


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = RedisServer().start()
    yield server.url
    server.stop()


async def test_two_replicas_share_state_through_redis(redis_url: str) -> None:
    a = BreakerRegistry(gauge(), redis_url, prefix="t1")
    gb = gauge()
    b = BreakerRegistry(gb, redis_url, prefix="t1")
    try:
        on_a, on_b = a.get("m", POLICY), b.get("m", POLICY)
        await a.sync()
        await b.sync()
        # failures seen by different replicas add up on the shared record
        on_a.record(Outcome.FAILURE, probe=False)
        on_b.record(Outcome.FAILURE, probe=False)
        await a.sync()
        await b.sync()
        await a.sync()
        assert on_a.view.counter == 2 and on_a.state == CLOSED
        on_a.record(Outcome.FAILURE, probe=False)
        await a.sync()
        assert on_a.state == OPEN
        await b.sync()  # B never saw the third failure: it learns from Redis
        assert on_b.state == OPEN and value(gb, "m") == 2
        with pytest.raises(BreakerOpen):
            on_b.allow()
    finally:
        await a.close()
        await b.close()


async def test_a_probe_on_one_replica_closes_the_circuit_for_all(redis_url: str) -> None:
    a = BreakerRegistry(gauge(), redis_url, prefix="t2")
    b = BreakerRegistry(gauge(), redis_url, prefix="t2")
    try:
        on_a, on_b = a.get("m", QUICK), b.get("m", QUICK)
        on_a.record(Outcome.FAILURE, probe=False)
        on_a.record(Outcome.FAILURE, probe=False)
        await a.sync()
        await b.sync()
        assert on_b.view.state == OPEN
        await until(lambda: on_b.state == HALF_OPEN)
        assert on_b.allow() is True
        on_b.record(Outcome.SUCCESS, probe=True)
        await b.sync()
        await a.sync()
        assert on_a.state == CLOSED and on_b.state == CLOSED
    finally:
        await a.close()
        await b.close()


async def test_background_task_publishes_without_being_asked(redis_url: str) -> None:
    a = BreakerRegistry(gauge(), redis_url, prefix="t3", interval_s=0.05)
    b = BreakerRegistry(gauge(), redis_url, prefix="t3", interval_s=0.05)
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    try:
        on_a, on_b = a.get("m", POLICY), b.get("m", POLICY)
        for _ in range(3):
            on_a.record(Outcome.FAILURE, probe=False)
        await until(lambda: on_b.state == OPEN)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await a.close()
        await b.close()


async def test_unreachable_redis_keeps_the_local_view(caplog: pytest.LogCaptureFixture) -> None:
    registry = BreakerRegistry(gauge(), "redis://127.0.0.1:1/0", timeout_s=0.2)
    try:
        breaker = registry.get("m", POLICY)
        for _ in range(3):
            breaker.record(Outcome.FAILURE, probe=False)
        await registry.sync()  # does not raise
        assert breaker.state == OPEN
        assert "redis unreachable" in caplog.text
        breaker.record(Outcome.FAILURE, probe=False)
        await registry.sync()
        assert registry._pending == {"m": ["f", "f", "f", "f"]}, "kept for when Redis is back"
    finally:
        await registry.close()


async def test_a_new_replica_follows_open_circuits_before_its_first_call(redis_url: str) -> None:
    """A replica that starts during an outage knows every configured deployment's shared circuit at
    once (build_runtime registers them, the app syncs before serving): no request reaches the
    deployment whose circuit another replica opened."""
    routes, _ = parse_routes(
        {
            "providers": {"p": {"type": "mock"}},
            "models": {"m": {"provider": "p"}, "n": {"provider": "p"}},
            "defaults": {"breaker": {"failures": 2, "reset_s": 60}},
        }
    )
    budgets, _ = parse_budgets({"tenants": {}}, routes=routes)
    policy = routes.defaults.breaker
    old = BreakerRegistry(gauge(), redis_url, prefix="t9")
    new = BreakerRegistry(gauge(), redis_url, prefix="t9")
    try:
        on_old = old.get("m", policy)
        on_old.record(Outcome.FAILURE, probe=False)
        on_old.record(Outcome.FAILURE, probe=False)
        await old.sync()
        assert on_old.state == OPEN
        build_runtime(
            routes,
            budgets,
            Shared(
                httpx.MockTransport(lambda r: httpx.Response(500)), MemoryStore(), MemoryStore(), breakers=new
            ),
        )
        await new.sync()
        with pytest.raises(BreakerOpen):
            new.get("m", policy).allow()
        assert new.get("n", policy).state == CLOSED
    finally:
        await old.close()
        await new.close()
