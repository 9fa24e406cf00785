"""The mask mapping stores: kept until the deadline, taken once; placeholders restored, unknown ones kept."""

from __future__ import annotations

import redis
from redis_server import RedisServer

from plugins.guard.mask import Masker, MemoryStore, RedisStore, restore


def test_the_same_value_gets_the_same_placeholder() -> None:
    masker = Masker()
    assert masker.placeholder("EMAIL", "a@x.io") == "[EMAIL_1]"
    assert masker.placeholder("PHONE", "+44 20 7946 0958") == "[PHONE_1]"
    assert masker.placeholder("EMAIL", "b@x.io") == "[EMAIL_2]"
    assert masker.placeholder("EMAIL", "a@x.io") == "[EMAIL_1]"
    assert masker.mapping == {"[EMAIL_1]": "a@x.io", "[PHONE_1]": "+44 20 7946 0958", "[EMAIL_2]": "b@x.io"}
    assert restore("[EMAIL_2], [EMAIL_1], [EMAIL_3], [EMAIL]", masker.mapping) == (
        "b@x.io, a@x.io, [EMAIL_3], [EMAIL]",
        2,
    )


async def test_memory_store_takes_once_and_drops_expired_entries() -> None:
    store = MemoryStore()
    await store.put("r1", {"[EMAIL_1]": "a@x.io"}, ttl_s=60)
    assert await store.take("r1") == {"[EMAIL_1]": "a@x.io"}
    assert await store.take("r1") is None
    for i in range(100):
        await store.put(f"old{i}", {"[IP_1]": "10.0.0.1"}, ttl_s=0)  # already past its deadline
    assert await store.take("old5") is None
    await store.put("live", {"[IP_1]": "10.0.0.2"}, ttl_s=60)
    assert len(store) == 1  # the expired ones were swept by the put


async def test_redis_store_is_shared_and_expires() -> None:
    server = RedisServer().start()
    try:
        a, b = RedisStore(server.url), RedisStore(server.url)
        await a.put("r1", {"[CARD_1]": "4111 1111 1111 1111"}, ttl_s=60)
        assert await b.take("r1") == {"[CARD_1]": "4111 1111 1111 1111"}
        assert await a.take("r1") is None
        await a.put("r2", {"[CARD_1]": "x"}, ttl_s=30)

        with redis.Redis.from_url(server.url) as raw:
            assert 0 < raw.pttl("guard:mask:r2") <= 35_000  # a deadline, never kept for good
        await a.aclose()
        await b.aclose()
    finally:
        server.stop()
