"""``pii: mask``: numbered placeholders to the model, and the originals kept until the answer comes back.

The pre hook replaces each value with ``[TYPE_n]`` (the same value, the same placeholder) and stores
``{placeholder: value}`` under the request id; the post hook of the same request takes it back and
restores the originals in the answer. The mapping never leaves the sidecar's side: not in annotations
(they reach the client and the log), not in the request (it reaches the model). It lives until the
request's deadline: in this process's memory, or in Redis when ``REDIS_URL`` is set, so a post hook
served by another replica of the sidecar finds it.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis

from plugins.guard.pii import TYPES

PLACEHOLDER = re.compile(r"\[(?:" + "|".join(TYPES) + r")_\d+\]")
KEY_PREFIX = "guard:mask:"


class Masker:
    """The placeholders of one request."""

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}
        self.mapping: dict[str, str] = {}

    def placeholder(self, type_: str, value: str) -> str:
        known = self._by_value.get((type_, value))
        if known is not None:
            return known
        n = self._counts.get(type_, 0) + 1
        self._counts[type_] = n
        name = f"[{type_}_{n}]"
        self._by_value[(type_, value)] = name
        self.mapping[name] = value
        return name


def restore(text: str, mapping: dict[str, str]) -> tuple[str, int]:
    """``text`` with known placeholders replaced by their originals, and how many were."""
    count = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal count
        original = mapping.get(m.group())
        if original is None:
            return m.group()
        count += 1
        return original

    return PLACEHOLDER.sub(sub, text), count


class MaskStore(Protocol):
    async def put(self, request_id: str, mapping: dict[str, str], ttl_s: float) -> None: ...

    async def take(self, request_id: str) -> dict[str, str] | None:
        """The mapping, removed from the store (each request's answer is restored once)."""
        ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """One process's mappings, each dropped at its deadline.

    Expired entries are swept from the oldest on every put, stopping at the first live one: requests
    mostly share one timeout, so insertion order is close to expiry order and the sweep costs O(1) a put.
    """

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[float, dict[str, str]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, request_id: str, mapping: dict[str, str], ttl_s: float) -> None:
        now = time.monotonic()
        while self._items:
            oldest = next(iter(self._items))
            if self._items[oldest][0] > now:
                break
            del self._items[oldest]
        self._items[request_id] = (now + ttl_s, mapping)

    async def take(self, request_id: str) -> dict[str, str] | None:
        item = self._items.pop(request_id, None)
        if item is None or item[0] <= time.monotonic():
            return None
        return item[1]

    async def aclose(self) -> None:
        self._items.clear()


class RedisStore:
    """Mappings shared by every replica of the sidecar: ``SET … PX`` then ``GETDEL``."""

    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(url)

    async def put(self, request_id: str, mapping: dict[str, str], ttl_s: float) -> None:
        await self._redis.set(KEY_PREFIX + request_id, json.dumps(mapping), px=max(1, int(ttl_s * 1000)))

    async def take(self, request_id: str) -> dict[str, str] | None:
        raw = await self._redis.getdel(KEY_PREFIX + request_id)
        if raw is None:
            return None
        mapping: dict[str, str] = json.loads(raw)
        return mapping

    async def aclose(self) -> None:
        await self._redis.aclose()
