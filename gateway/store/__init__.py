"""Where admission state lives: Redis for several replicas, process memory for one.

``build_store`` picks one from ``GATEWAY_REDIS_URL``. Both keep the contract in ``base`` (admit,
settle, spend — exact under concurrency, one atomic step each), store run-time API keys for the
admin API (``KeyStore``) and hold the response cache (``cache_get`` / ``cache_put``); the same
contract tests run against both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from gateway.store.base import CacheLookup, ScopeLimits, Spend, Store

log = logging.getLogger("gateway.store")


class KeyStore(Protocol):
    """Run-time API keys (admin API): JSON-able records by sha256 of the secret, with a change counter."""

    async def put_key(self, sha256: str, record: Mapping[str, Any]) -> None:
        """Store ``record`` (it must carry a string ``id``); re-using an id replaces its old secret."""
        ...

    async def delete_key(self, key_id: str) -> bool:
        """Remove the key with this id; whether there was one."""
        ...

    async def list_keys(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Records (of one tenant, or all), sorted by id."""
        ...

    async def keys_version(self) -> int:
        """A counter bumped on every change, so replicas can poll it cheaply and reload on change."""
        ...

    async def all_keys(self) -> dict[str, dict[str, Any]]:
        """sha256 → record."""
        ...


class GatewayStore(Store, KeyStore, Protocol):
    """What ``build_store`` returns: the admission store plus run-time keys."""

    async def spend(self, tenant: str, scope: ScopeLimits, now: float | None = None) -> Spend:
        """Spent (current period) and live reserved for one scope; ``now`` (default: the wall clock)
        decides which leases have expired and are reaped first."""
        ...

    async def cache_get(self, key: str) -> bytes | None:
        """The response-cache entry under ``key`` (``gw:{<tenant>}:cache:<sha256>``), if live."""
        ...

    def cache_lookup(self, key: str) -> CacheLookup:
        """``cache_get`` sent now and awaited later (it shares the store write of whatever else is sent
        in this loop turn, e.g. the admission). ``cancel()`` it if its answer is no longer wanted."""
        ...

    def cache_put(self, key: str, value: bytes, ttl_s: int) -> asyncio.Future[None]:
        """Store a response-cache entry for ``ttl_s`` seconds, replacing any entry under ``key``, so that
        this process's next lookup finds it however quick; the future tells the outcome (None, or
        ``StoreUnavailableError``)."""
        ...


def build_store(redis_url: str | None, *, timeout_s: float = 0.25) -> GatewayStore:
    """A ``RedisStore`` for a URL, else a ``MemoryStore`` (one process only). Nothing connects yet."""
    if not redis_url:
        from gateway.store.memory import MemoryStore

        return MemoryStore()
    from gateway.store.redis import RedisStore  # redis is only imported when it is used

    return RedisStore(redis_url, timeout_s=timeout_s)


async def warn_if_evicting(store: GatewayStore) -> None:
    """Log a warning when the store that holds money may evict keys (checked once, at start-up)."""
    from gateway.store.redis import RedisStore

    if not isinstance(store, RedisStore):
        return
    policy = await store.eviction_policy()
    if policy is not None and policy != "noeviction":
        log.warning(
            "GATEWAY_REDIS_URL: maxmemory-policy is %r, not 'noeviction': an evicted budget, spend or "
            "reservation key silently resets a limit. Use noeviction there, and put the response cache "
            "on its own Redis (GATEWAY_CACHE_REDIS_URL) if it should be evicted.",
            policy,
        )
