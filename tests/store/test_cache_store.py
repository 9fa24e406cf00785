"""The response cache's store methods, on both stores (see the ``store`` fixture)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from gateway.store import GatewayStore
from gateway.store.base import StoreUnavailableError
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

KEY = "gw:{acme}:cache:" + "0" * 64


async def test_put_then_get(store: GatewayStore) -> None:
    assert await store.cache_get(KEY) is None
    await store.cache_put(KEY, b"answer", 60)
    assert await store.cache_get(KEY) == b"answer"
    await store.cache_put(KEY, b"replaced", 60)
    assert await store.cache_get(KEY) == b"replaced"
    assert await store.cache_get(KEY.replace("acme", "initech")) is None


async def test_an_entry_expires_after_its_ttl(store: GatewayStore) -> None:
    await store.cache_put(KEY, b"answer", 1)
    await asyncio.sleep(1.1)
    assert await store.cache_get(KEY) is None


@pytest.mark.redis
async def test_redis_sets_the_ttl_in_the_tenant_slot(clean_redis: str) -> None:
    store = RedisStore(clean_redis, timeout_s=2.0)
    try:
        await store.cache_put(KEY, b"answer", 60)
        with redis.Redis.from_url(clean_redis) as client:
            assert 55 <= int(client.ttl(KEY)) <= 60
            assert client.get(KEY) == b"answer"
    finally:
        await store.close()


async def test_memory_cache_is_bounded_oldest_first() -> None:
    store = MemoryStore(cache_entries=3)
    for i in range(5):
        await store.cache_put(f"k{i}", b"v", 60)
    assert [await store.cache_get(f"k{i}") for i in range(5)] == [None, None, b"v", b"v", b"v"]


@pytest.mark.redis
async def test_a_redis_put_that_fails_says_store_unavailable(clean_redis: str) -> None:
    store = RedisStore(clean_redis, timeout_s=2.0)
    try:
        with redis.Redis.from_url(clean_redis) as client:
            client.config_set("maxmemory", "1")
            client.config_set("maxmemory-policy", "noeviction")
            try:
                with pytest.raises(StoreUnavailableError, match="refused the write"):
                    await store.cache_put(KEY, b"answer" * 100, 60)  # an OOM error reply
            finally:
                client.config_set("maxmemory", "0")
        await store.cache_put(KEY, b"answer", 60)
    finally:
        await store.close()
    unreachable = RedisStore("redis://127.0.0.1:1", timeout_s=0.5)  # nothing listens on port 1
    try:
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            await unreachable.cache_put(KEY, b"answer", 60)
    finally:
        await unreachable.close()


@pytest.mark.redis
async def test_a_small_put_rides_with_the_next_write_a_large_one_leaves_at_once(clean_redis: str) -> None:
    store = RedisStore(clean_redis, timeout_s=2.0)
    try:
        await store.ping()  # connected and idle
        small, large = KEY, KEY.replace("acme", "large")
        small_put = store.cache_put(small, b"s" * 100, 60)
        large_put = store.cache_put(large, b"l" * 4000, 60)  # written now, the small one with it
        with redis.Redis.from_url(clean_redis) as client:
            time.sleep(0.05)  # noqa: ASYNC251 (blocking on purpose: no timer of this loop may fire)
            assert client.exists(small, large) == 2
            await asyncio.gather(small_put, large_put)
            alone = store.cache_put(KEY.replace("acme", "alone"), b"a" * 100, 60)
            time.sleep(0.05)  # noqa: ASYNC251
            assert client.exists(KEY.replace("acme", "alone")) == 0  # waits for company (or 2 ms)
            await alone
            assert client.exists(KEY.replace("acme", "alone")) == 1
    finally:
        await store.close()
