"""At-most-once tool calls: every call is claimed under its idempotency key before it runs.

The key is the response id and the model's call id (``<response id>:<call id>``); an approved call keeps
the key of the response that asked for the approval, so however often an approval is sent (a client's
retry, a second turn from the same ``previous_response_id``) the call runs once. The claim writes a
``pending`` record in one atomic step (Redis ``SET NX GET``: claimed, or the record that was there), and
the result replaces it once the call returned. A second claim of the same key gets:

* ``done`` — the recorded result, returned as the call's result (nothing runs again);
* ``pending`` — the call is running elsewhere, or its replica died mid-call: the outcome is unknown, and
  the call is NOT run again (``UNKNOWN``), since it may have had its effect.

Records live in the admission store (Redis when configured, in the tenant's hash slot; this process's
memory otherwise) for ``RECORD_TTL_S``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.store import GatewayStore

RECORD_TTL_S = 86_400
UNKNOWN = (
    "the outcome of this call is unknown: it was already running (or its gateway replica stopped mid-call)"
)


@dataclass(frozen=True, slots=True)
class Record:
    state: str
    """``pending`` or ``done``."""
    digest: str
    """sha256 of the tool and arguments, so a reused call id with other arguments is told apart."""
    output: str | None = None
    error: dict[str, Any] | None = None

    def dumps(self) -> bytes:
        return orjson.dumps({"s": self.state, "d": self.digest, "o": self.output, "e": self.error})

    @staticmethod
    def loads(raw: bytes | str) -> Record:
        data = orjson.loads(raw)
        return Record(data["s"], data["d"], data.get("o"), data.get("e"))


class CallRecords(Protocol):
    async def claim(self, tenant: str, key: str, record: Record) -> Record | None:
        """None: claimed (``record`` is now stored); else the record already there."""
        ...

    async def finish(self, tenant: str, key: str, record: Record) -> None: ...


class RedisCallRecords:
    def __init__(self, store: Any, prefix: str = "gw") -> None:
        self._store = store  # a RedisStore: ``command`` follows Sentinel and Cluster
        self._prefix = prefix

    def _key(self, tenant: str, key: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:toolcall:{key}"

    async def claim(self, tenant: str, key: str, record: Record) -> Record | None:
        old = await self._store.command(
            "SET", self._key(tenant, key), record.dumps(), "NX", "GET", "EX", RECORD_TTL_S
        )
        return None if old is None else Record.loads(old)

    async def finish(self, tenant: str, key: str, record: Record) -> None:
        await self._store.command("SET", self._key(tenant, key), record.dumps(), "EX", RECORD_TTL_S)


class LocalCallRecords:
    """One process's records (no Redis): plain dict operations with no ``await`` between check and set."""

    def __init__(self, max_records: int = 100_000) -> None:
        self._records: dict[tuple[str, str], tuple[float, Record]] = {}
        self._max = max_records

    async def claim(self, tenant: str, key: str, record: Record) -> Record | None:
        now = time.monotonic()
        found = self._records.get((tenant, key))
        if found is not None and found[0] > now:
            return found[1]
        self._put(tenant, key, record, now)
        return None

    async def finish(self, tenant: str, key: str, record: Record) -> None:
        self._put(tenant, key, record, time.monotonic())

    def _put(self, tenant: str, key: str, record: Record, now: float) -> None:
        self._records[(tenant, key)] = (now + RECORD_TTL_S, record)
        if len(self._records) > self._max:  # oldest first: dicts keep insertion order
            del self._records[next(iter(self._records))]


def build_records(store: GatewayStore) -> CallRecords:
    from gateway.store.redis import RedisStore

    if isinstance(store, RedisStore):
        return RedisCallRecords(store)
    return LocalCallRecords()
