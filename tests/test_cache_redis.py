"""``GATEWAY_CACHE_REDIS_URL``: response-cache entries on their own Redis (eviction allowed there), money
on the main one; a warning at start-up when the money store may evict keys."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from conftest import KEY_ACME, LiveServer, sha
from redis_server import RedisServer

from gateway.app import create_app
from gateway.settings import Settings

pytestmark = pytest.mark.redis

ROUTES = """
providers:
  local: {type: mock}
models:
  mock-chat: {provider: local, price: {input_per_mtok: 2.0, output_per_mtok: 4.0}}
routes:
  - name: cached
    match: {model: cached}
    targets: [{model: mock-chat}]
    cache: {ttl_s: 300}
"""
BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 100, period: daily}}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
"""
HI = [{"role": "user", "content": "hi"}]
BODY = {"model": "cached", "max_tokens": 20, "temperature": 0, "messages": HI}


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    money = RedisServer("--maxmemory-policy", "allkeys-lru").start()  # wrong for money: warned about
    cache = RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru").start()
    yield money, cache
    money.stop()
    cache.stop()


def gateway(tmp_path: Path, **urls: str) -> LiveServer:
    (tmp_path / "routes.yaml").write_text(ROUTES)
    (tmp_path / "budgets.yaml").write_text(BUDGETS)
    settings = Settings(
        routes_path=str(tmp_path / "routes.yaml"), budgets_path=str(tmp_path / "budgets.yaml"), **urls
    )
    return LiveServer(create_app(settings)).start()


def keys(server: RedisServer, pattern: str) -> list[bytes]:
    with redis.Redis(port=server.port) as c:
        return sorted(c.scan_iter(match=pattern))


def test_the_cache_lives_on_its_own_redis(
    tmp_path: Path, servers: tuple[RedisServer, RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    money, cache = servers
    with caplog.at_level(logging.WARNING, logger="gateway.store"):
        live = gateway(tmp_path, redis_url=money.url, cache_redis_url=cache.url)
    try:
        with httpx.Client(base_url=live.url, headers={"authorization": f"Bearer {KEY_ACME}"}) as client:
            first = client.post("/v1/chat/completions", json=BODY)
            again = client.post("/v1/chat/completions", json=BODY)
        assert (first.status_code, first.headers["x-gateway-cache"]) == (200, "miss")
        assert (again.status_code, again.headers["x-gateway-cache"]) == (200, "hit")
        assert len(keys(cache, "gw:{acme}:cache:*")) == 1
        assert keys(cache, "gw:{acme}:spent:*") == []
        assert keys(money, "gw:{acme}:cache:*") == []
        assert len(keys(money, "gw:{acme}:spent:*")) == 1
    finally:
        live.stop()
    warned = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warned) == 1 and "'allkeys-lru', not 'noeviction'" in warned[0]


def test_no_warning_for_a_noeviction_money_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    money = RedisServer().start()
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.store"):
            gateway(tmp_path, redis_url=money.url).stop()
        assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    finally:
        money.stop()


def test_the_cache_url_comes_from_the_environment_and_reaches_the_workers() -> None:
    settings = Settings.from_env(
        {"GATEWAY_REDIS_URL": "redis://a:6379/0", "GATEWAY_CACHE_REDIS_URL": "redis://b/1"}
    )
    assert (settings.redis_url, settings.cache_redis_url) == ("redis://a:6379/0", "redis://b/1")
    assert settings.to_env()["GATEWAY_CACHE_REDIS_URL"] == "redis://b/1"
    assert "GATEWAY_CACHE_REDIS_URL" not in Settings.from_env({}).to_env()
