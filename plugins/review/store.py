"""The review queue, per tenant: in this process's memory, or in Redis (``REDIS_URL``) so that every
replica of the sidecar sees the same items and any of them can decide one.

An item is written once (``put``; the same id again returns the item already there, so a tool call
asked twice is one item) and decided once (``decide``: the first decision wins, atomically; the
others get the winner back). Waiting for a decision (``wait``) wakes at once for a decision made in
this process and within ``POLL_S`` for one made by another replica.

Redis layout (every key of a tenant in one hash slot, ``{tenant}``):
``review:{T}:item:<id>`` a hash (``item``: the JSON item, ``status``, ``decision``: JSON), expiring
``retention_s`` after creation; ``review:{T}:pending`` a sorted set of pending ids by creation time.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

POLL_S = 0.2
"""How often a waiter looks for a decision another replica made."""
RETENTION_S = 7 * 86400.0
"""How long a decided item (and its answer) stays readable: the client's poll, the reviewer's history."""


@dataclass(slots=True)
class Record:
    item: dict[str, Any]
    status: str
    """``pending``, ``approved``, ``edited``, ``rejected``, ``timed_out``."""
    decision: dict[str, Any] | None = None


class Queue(Protocol):
    async def put(self, item: dict[str, Any], ttl_s: float) -> Record: ...
    async def get(self, tenant: str, item_id: str) -> Record | None: ...
    async def pending(self, tenant: str, limit: int) -> list[Record]: ...
    async def decide(
        self, tenant: str, item_id: str, status: str, decision: dict[str, Any]
    ) -> tuple[bool, Record | None]:
        """(True, the record) when this decision won; (False, the record as decided before) when
        another came first; (False, None) for an unknown id."""
        ...

    async def wait(self, tenant: str, item_id: str, timeout_s: float) -> Record | None: ...
    async def depth(self) -> dict[str, int]: ...
    async def aclose(self) -> None: ...


class _Wakers:
    """Waiters of this process by item id, woken when this process decides the item."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, item_id: str) -> asyncio.Event:
        return self._events.setdefault(item_id, asyncio.Event())

    def wake(self, item_id: str) -> None:
        event = self._events.get(item_id)
        if event is not None:
            event.set()

    def done(self, item_id: str) -> None:
        self._events.pop(item_id, None)


class MemoryQueue:
    """One process's queue (no ``REDIS_URL``): items live as long as the process, up to their TTL."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, tuple[Record, float]]] = {}
        self._wakers = _Wakers()

    def _live(self, tenant: str) -> dict[str, tuple[Record, float]]:
        items = self._items.setdefault(tenant, {})
        now = time.time()
        for item_id in [i for i, (_, expires) in items.items() if expires < now]:
            del items[item_id]
        return items

    async def put(self, item: dict[str, Any], ttl_s: float) -> Record:
        items = self._live(item["tenant"])
        if item["id"] in items:
            return items[item["id"]][0]
        record = Record(item, "pending")
        items[item["id"]] = (record, time.time() + max(ttl_s, RETENTION_S))
        return record

    async def get(self, tenant: str, item_id: str) -> Record | None:
        found = self._live(tenant).get(item_id)
        return found[0] if found else None

    async def pending(self, tenant: str, limit: int) -> list[Record]:
        records = [r for r, _ in self._live(tenant).values() if r.status == "pending"]
        return sorted(records, key=lambda r: r.item["created"])[:limit]

    async def decide(
        self, tenant: str, item_id: str, status: str, decision: dict[str, Any]
    ) -> tuple[bool, Record | None]:
        record = await self.get(tenant, item_id)
        if record is None:
            return False, None
        if record.status != "pending":
            return False, record
        record.status, record.decision = status, decision
        self._wakers.wake(item_id)
        return True, record

    async def wait(self, tenant: str, item_id: str, timeout_s: float) -> Record | None:
        record = await self.get(tenant, item_id)
        if record is None or record.status != "pending":
            return record
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await self._wakers.event(item_id).wait()
        except TimeoutError:
            pass  # still pending: the caller decides what a timeout means
        finally:
            self._wakers.done(item_id)
        return await self.get(tenant, item_id)

    async def depth(self) -> dict[str, int]:
        return {t: sum(r.status == "pending" for r, _ in self._live(t).values()) for t in list(self._items)}

    async def aclose(self) -> None:
        return None


_PUT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HMGET', KEYS[1], 'item', 'status', 'decision')
end
redis.call('HSET', KEYS[1], 'item', ARGV[1], 'status', 'pending')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return false
"""

_DECIDE = """
local found = redis.call('HMGET', KEYS[1], 'item', 'status', 'decision')
if not found[1] then return {0} end
if found[2] ~= 'pending' then return {0, found[1], found[2], found[3]} end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'decision', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return {1, found[1], ARGV[1], ARGV[2]}
"""


def _key(tenant: str, item_id: str) -> str:
    return f"review:{{{tenant}}}:item:{item_id}"


def _pending_key(tenant: str) -> str:
    return f"review:{{{tenant}}}:pending"


def _record(item: Any, status: Any, decision: Any) -> Record | None:
    if item is None:
        return None
    return Record(json.loads(item), str(status), json.loads(decision) if decision else None)


class RedisQueue:
    """The queue every replica shares. Put and decide are Lua scripts: one round trip, atomic."""

    def __init__(self, url: str) -> None:
        # blocking: a burst of waiters queues for a connection instead of failing with "too many"
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=5,
            max_connections=64,
            timeout=5,
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._put = self._redis.register_script(_PUT)
        self._decide = self._redis.register_script(_DECIDE)
        self._wakers = _Wakers()

    async def put(self, item: dict[str, Any], ttl_s: float) -> Record:
        tenant, item_id = item["tenant"], item["id"]
        ttl_ms = int(max(ttl_s, RETENTION_S) * 1000)
        found = await self._put(
            keys=[_key(tenant, item_id), _pending_key(tenant)],
            args=[json.dumps(item), ttl_ms, item["created"], item_id],
        )
        if found:
            existing = _record(*found)
            if existing is not None:
                return existing
        return Record(item, "pending")

    async def get(self, tenant: str, item_id: str) -> Record | None:
        found = await self._redis.hmget(_key(tenant, item_id), ["item", "status", "decision"])
        return _record(*found)

    async def pending(self, tenant: str, limit: int) -> list[Record]:
        ids = [str(i) for i in await self._redis.zrange(_pending_key(tenant), 0, limit - 1)]
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for item_id in ids:
            pipe.hmget(_key(tenant, item_id), ["item", "status", "decision"])
        out: list[Record] = []
        gone: list[str] = []
        for item_id, found in zip(ids, await pipe.execute(), strict=True):
            record = _record(*found)
            if record is None:
                gone.append(item_id)  # expired: its index entry goes too
            elif record.status == "pending":
                out.append(record)
        if gone:
            await self._redis.zrem(_pending_key(tenant), *gone)
        return out

    async def decide(
        self, tenant: str, item_id: str, status: str, decision: dict[str, Any]
    ) -> tuple[bool, Record | None]:
        won, *rest = await self._decide(
            keys=[_key(tenant, item_id), _pending_key(tenant)],
            args=[status, json.dumps(decision), item_id],
        )
        record = _record(*rest) if rest else None
        if won:
            self._wakers.wake(item_id)
        return bool(won), record

    async def wait(self, tenant: str, item_id: str, timeout_s: float) -> Record | None:
        end = time.monotonic() + max(timeout_s, 0.0)
        event = self._wakers.event(item_id)
        try:
            while True:
                status = await self._redis.hget(_key(tenant, item_id), "status")
                left = end - time.monotonic()
                if status != "pending" or left <= 0:
                    break
                try:
                    async with asyncio.timeout(min(POLL_S, left)):
                        await event.wait()
                except TimeoutError:
                    continue  # poll again: another replica may have decided
        finally:
            self._wakers.done(item_id)
        return await self.get(tenant, item_id)

    async def depth(self) -> dict[str, int]:
        out: dict[str, int] = {}
        async for key in self._redis.scan_iter(match="review:{*}:pending", count=500):
            tenant = key[len("review:{") : -len("}:pending")]
            out[tenant] = int(await self._redis.zcard(key))
        return out

    async def aclose(self) -> None:
        await self._redis.aclose()
