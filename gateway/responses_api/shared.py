"""Stored responses in Redis, beside the money: every replica sees every conversation.

A turn is one string key in its tenant's hash slot, ``gw:{<tenant>}:resp:<id>``, holding the
``StoredResponse`` as JSON, with ``EX`` = the retention TTL (``defaults.response_retention_s``):
Redis expires it, so an expired id is simply absent. The tenant in the key is what isolates tenants:
another tenant's id is a different key, absent here, exactly as a missing one. Commands go through
the admission store's client (``RedisStore.command``), so Sentinel failover and Cluster slot routing
apply unchanged; any Redis failure is ``StoreUnavailableError`` (503 at the handler boundary).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from gateway.responses_api.store import (
    DEFAULT_RETENTION_S,
    ResponseNotFoundError,
    StoredResponse,
    walk_chain,
)
from gateway.store.redis import RedisStore


class RedisResponseStore:
    def __init__(self, store: RedisStore, prefix: str = "gw") -> None:
        self._store = store
        self._prefix = prefix

    def key(self, tenant: str, response_id: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:resp:{response_id}"

    async def put(self, stored: StoredResponse, ttl_s: int = DEFAULT_RETENTION_S) -> None:
        value = orjson.dumps(dataclasses.asdict(stored))
        await self._store.command("SET", self.key(stored.tenant, stored.id), value, "EX", ttl_s)

    async def get(self, tenant: str, response_id: str) -> StoredResponse:
        raw = await self._store.command("GET", self.key(tenant, response_id))
        if raw is None:
            raise ResponseNotFoundError(response_id)
        data: dict[str, Any] = orjson.loads(raw)
        return StoredResponse(**data)

    async def delete(self, tenant: str, response_id: str) -> bool:
        return bool(await self._store.command("DEL", self.key(tenant, response_id)))

    async def chain(self, tenant: str, response_id: str) -> list[StoredResponse]:
        # One GET per turn: a turn only names its predecessor. A chain ends at its newest summary, so
        # under ``memory`` the walk stays short however long the conversation grows.
        return await walk_chain(self.get, tenant, response_id)
