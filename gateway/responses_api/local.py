"""Stored responses in this process: the ``ResponseStore`` of a gateway without Redis.

Like the in-process admission store (``gateway/store/memory.py``) it is one process only; with several
workers or replicas, configure Redis. Operations are plain Python with no ``await`` inside, so they
are atomic on one event loop. Expiry is lazy (checked on read) plus a sweep on put; the number of live
turns is bounded (``MAX_ENTRIES``, oldest put dropped first) so a process that serves long
conversations for weeks does not grow without limit. Nothing here survives a restart: stored
conversations are a convenience, not money (the state file keeps spend and keys).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from gateway.responses_api.store import (
    DEFAULT_RETENTION_S,
    ResponseNotFoundError,
    StoredResponse,
    walk_chain,
)

MAX_ENTRIES = 100_000
SWEEP_EVERY_S = 60.0


class LocalResponseStore:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max = max_entries
        self._clock = time.time
        # (tenant, id) → (expiry unix s, turn); insertion order = put order, for the bound.
        self._turns: OrderedDict[tuple[str, str], tuple[float, StoredResponse]] = OrderedDict()
        self._next_sweep = 0.0

    async def put(self, stored: StoredResponse, ttl_s: int = DEFAULT_RETENTION_S) -> None:
        now = self._clock()
        key = (stored.tenant, stored.id)
        self._turns.pop(key, None)
        self._turns[key] = (now + ttl_s, stored)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY_S
            for k in [k for k, (expiry, _) in self._turns.items() if expiry <= now]:
                del self._turns[k]
        while len(self._turns) > self._max:
            self._turns.popitem(last=False)

    async def get(self, tenant: str, response_id: str) -> StoredResponse:
        return self._get(tenant, response_id)

    def _get(self, tenant: str, response_id: str) -> StoredResponse:
        entry = self._turns.get((tenant, response_id))
        if entry is None:
            raise ResponseNotFoundError(response_id)
        expiry, stored = entry
        if expiry <= self._clock():
            del self._turns[(tenant, response_id)]
            raise ResponseNotFoundError(response_id)
        return stored

    async def delete(self, tenant: str, response_id: str) -> bool:
        try:
            self._get(tenant, response_id)
        except ResponseNotFoundError:
            return False
        del self._turns[(tenant, response_id)]
        return True

    async def chain(self, tenant: str, response_id: str) -> list[StoredResponse]:
        return await walk_chain(self.get, tenant, response_id)
