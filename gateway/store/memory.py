"""The in-process store: the same contract as Redis, for one process (no ``GATEWAY_REDIS_URL``).

Every operation is plain Python with no ``await`` inside it, so on one event loop each admit and
settle runs to completion before any other starts: that is what makes it atomic, exactly as one
Lua script is atomic in Redis. The arithmetic mirrors the Lua scripts (integer milliseconds, the
same 60 one-second buckets, the same refusal order) and a differential test checks that both stores
answer a random workload identically. It is not shared between processes: with several workers,
use Redis.

Semantics both stores keep, where ``base`` leaves a choice:

* Refusal order: a spent budget wins over rate limits (retrying cannot help, so the client should
  not); otherwise the failing rpm/tpm limit with the latest ``retry_after_s`` is reported, since the
  request cannot pass before then. Scopes are checked in the order given; the first wins a tie.
* ``retry_after_s``: seconds until enough of the oldest buckets leave the window; 60 when the
  request alone exceeds the limit (it can never pass); 0 for budget refusals.
* ``ScopeState``: usage after this request when admitted, before it when refused. ``*_reset_s`` is
  the time until the oldest non-empty bucket leaves the window (0 when the window is empty); zeros
  for a limit the scope does not have, whose window is not kept at all.
* A reservation holds ``cost_nano`` in every scope of the ask; ``spend`` reports it as reserved.
* ``settle`` runs once per request id: a marker kept ``DONE_TTL_S`` makes a second settle (or a
  late admission of a settled or released id) change nothing, as in Redis.
* ``settle`` corrects TPM: extra tokens go into the current second; over-reserved tokens are given
  back in the bucket that holds the reservation, never below zero, and not at all once that bucket
  has left the window or the reservation was reaped.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.store.base import (
    DONE_TTL_S,
    Admission,
    AlreadySettledError,
    Ask,
    ScopeLimits,
    ScopeState,
    Settlement,
    Spend,
)

WINDOW_S = 60
SPENT_RETENTION_S = 32 * 86_400
"""A period's spent is kept this long after the period starts: the longest period (a 31-day month)
plus a day for settles straddling the boundary and for clock skew. ``total`` (period_start 0) is kept."""
SWEEP_EVERY_MS = 60_000
CACHE_ENTRIES = 10_000
"""The response cache holds at most this many answers; the oldest put goes first."""

_KINDS: tuple[Literal["rpm", "tpm", "budget"], ...] = ("rpm", "tpm", "budget")


@dataclass(slots=True)
class _Reservation:
    second: int
    cost: int
    scopes: tuple[str, ...]
    expiry_ms: int


@dataclass(slots=True)
class _Tenant:
    windows: dict[str, dict[int, int]] = field(default_factory=dict)
    """``rpm:<scope>`` / ``tpm:<scope>`` → second → count."""
    spent: dict[tuple[str, int], int] = field(default_factory=dict)
    """(scope, period_start) → spent nano."""
    reserved: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, _Reservation] = field(default_factory=dict)
    leases: list[tuple[int, str]] = field(default_factory=list)
    """A heap of (expiry ms, request id); entries of settled reservations are skipped lazily."""
    done: dict[str, int] = field(default_factory=dict)
    """Settled (or released) request id → marker expiry ms, in the order settled."""

    def settled(self, request_id: str, now_ms: int) -> bool:
        expiry = self.done.get(request_id)
        return expiry is not None and expiry > now_ms


def _window(buckets: dict[int, int], now_s: int) -> tuple[int, int | None]:
    """Used count and oldest live second of a window, dropping buckets that left it."""
    oldest_live = now_s - (WINDOW_S - 1)
    used, oldest = 0, None
    for second in [s for s in buckets if s < oldest_live]:
        del buckets[second]
    for second, value in buckets.items():
        used += value
        if oldest is None or second < oldest:
            oldest = second
    return used, oldest


def _retry_ms(buckets: dict[int, int], now_ms: int, used: int, need: int, limit: int) -> int:
    """Milliseconds until enough of the oldest buckets leave the window for ``need`` more to fit."""
    if need > limit:
        return WINDOW_S * 1000
    for second in sorted(buckets):
        used -= buckets[second]
        if used + need <= limit:
            return (second + WINDOW_S) * 1000 - now_ms
    return WINDOW_S * 1000


def _reset_ms(oldest: int | None, now_ms: int) -> int:
    return 0 if oldest is None else (oldest + WINDOW_S) * 1000 - now_ms


def _state(scope: str, used: list[int], oldest: list[int | None], now_ms: int) -> ScopeState:
    return ScopeState(
        scope=scope,
        rpm_used=used[0],
        tpm_used=used[1],
        rpm_reset_s=_reset_ms(oldest[0], now_ms) / 1000,
        tpm_reset_s=_reset_ms(oldest[1], now_ms) / 1000,
    )


class MemoryStore:
    """Admission, settlement and run-time keys held in this process's memory."""

    def __init__(self, cache_entries: int = CACHE_ENTRIES) -> None:
        self._tenants: dict[str, _Tenant] = {}
        self._cache: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        """key → (monotonic expiry, value), oldest put first."""
        self._cache_entries = cache_entries
        self._keys: dict[str, dict[str, Any]] = {}
        self._keys_version = 0
        self._next_sweep_ms = 0
        self._changed: set[str] = set()
        """Tenants whose durable state changed since ``take_changed`` (durability hook, see below)."""
        self.keys_changed: Callable[[], Awaitable[None]] | None = None
        """Durability hook: awaited after a key is put or deleted, so the admin API answers once the
        change is in the state file (a revoked key must not come back after a crash)."""

    # -- admission ----------------------------------------------------------------------------------------

    async def admit(self, ask: Ask) -> Admission:
        return self._admit(ask)

    def _admit(self, ask: Ask) -> Admission:
        if ask.tokens < 0 or ask.cost_nano < 0:
            raise ValueError("tokens and cost_nano must not be negative")
        now_ms = int(ask.now * 1000)
        now_s = now_ms // 1000
        self._sweep(now_ms)
        tenant = self._tenants.setdefault(ask.tenant, _Tenant())
        if tenant.settled(ask.request_id, now_ms):
            raise AlreadySettledError(f"request {ask.request_id} was already settled or released")
        self._reap(tenant, now_ms)

        used: list[list[int]] = []
        oldest: list[list[int | None]] = []
        refused, refused_at, retry, budget_at, budget_left = 0, 0, 0, 0, 0
        for i, scope in enumerate(ask.scopes, start=1):
            u: list[int] = [0, 0]
            o: list[int | None] = [None, None]
            for kind, limit, need in ((0, scope.rpm, 1), (1, scope.tpm, ask.tokens)):
                if limit is None:
                    continue
                buckets = tenant.windows.get(f"{_KINDS[kind]}:{scope.scope}", {})
                u[kind], o[kind] = _window(buckets, now_s)
                if u[kind] + need > limit:
                    wait = _retry_ms(buckets, now_ms, u[kind], need, limit)
                    if wait > retry:
                        refused, refused_at, retry = kind + 1, i, wait
            if scope.budget_nano is not None and budget_at == 0:
                held = tenant.spent.get((scope.scope, scope.period_start), 0)
                held += tenant.reserved.get(scope.scope, 0)
                if held + ask.cost_nano > scope.budget_nano:
                    budget_at, budget_left = i, scope.budget_nano - held
            used.append(u)
            oldest.append(o)

        # A spent budget wins over a rate limit: retrying later cannot help it, so the client should not.
        if budget_at:
            refused, refused_at, retry = 3, budget_at, 0
        if refused:
            return Admission(
                admitted=False,
                refused_by=_KINDS[refused - 1],
                refused_scope=ask.scopes[refused_at - 1].scope,
                retry_after_s=retry / 1000,
                budget_left_nano=budget_left,
                states=tuple(
                    _state(s.scope, u, o, now_ms) for s, u, o in zip(ask.scopes, used, oldest, strict=True)
                ),
            )

        self._release(tenant, ask.request_id)  # a reused request id must not be counted twice
        states = []
        for scope, u, o in zip(ask.scopes, used, oldest, strict=True):
            if ask.cost_nano:
                tenant.reserved[scope.scope] = tenant.reserved.get(scope.scope, 0) + ask.cost_nano
            if scope.rpm is not None:
                self._add(tenant, f"rpm:{scope.scope}", now_s, 1)
                u[0] += 1
                o[0] = now_s if o[0] is None else min(o[0], now_s)
            if scope.tpm is not None:
                if ask.tokens:
                    self._add(tenant, f"tpm:{scope.scope}", now_s, ask.tokens)
                    o[1] = now_s if o[1] is None else min(o[1], now_s)
                u[1] += ask.tokens
            states.append(_state(scope.scope, u, o, now_ms))
        expiry_ms = now_ms + int(ask.lease_s * 1000)
        tenant.reservations[ask.request_id] = _Reservation(
            now_s, ask.cost_nano, tuple(s.scope for s in ask.scopes), expiry_ms
        )
        heapq.heappush(tenant.leases, (expiry_ms, ask.request_id))
        return Admission(admitted=True, states=tuple(states))

    # -- settlement -----------------------------------------------------------------------------------------

    async def settle(self, settlement: Settlement) -> dict[str, int]:
        return self._settle(settlement)

    def _settle(self, st: Settlement) -> dict[str, int]:
        if st.cost_nano < 0:
            raise ValueError("cost_nano must not be negative")
        now_ms = int(st.now * 1000)
        now_s = now_ms // 1000
        tenant = self._tenants.setdefault(st.tenant, _Tenant())
        if tenant.settled(st.request_id, now_ms):
            return {s.scope: tenant.spent.get((s.scope, s.period_start), 0) for s in st.scopes}
        tenant.done.pop(st.request_id, None)  # an expired marker: renewed at the end of the order
        tenant.done[st.request_id] = now_ms + DONE_TTL_S * 1000
        admitted_at = self._release(tenant, st.request_id)
        delta = st.tokens - st.reserved_tokens
        out: dict[str, int] = {}
        for scope in st.scopes:
            if scope.tpm is not None and delta:
                name = f"tpm:{scope.scope}"
                if delta > 0:
                    self._add(tenant, name, now_s, delta)
                elif admitted_at is not None and admitted_at > now_s - WINDOW_S:
                    # give back the over-reservation in the bucket that holds it (see settle.lua)
                    buckets = tenant.windows.get(name, {})
                    left = buckets.get(admitted_at, 0) + delta
                    if left > 0:
                        buckets[admitted_at] = left
                    else:
                        buckets.pop(admitted_at, None)
            key = (scope.scope, scope.period_start)
            tenant.spent[key] = out[scope.scope] = tenant.spent.get(key, 0) + st.cost_nano
        self._changed.add(st.tenant)  # durability hook: the one thing settle pays for the state file
        return out

    async def spend(self, tenant: str, scope: ScopeLimits, now: float | None = None) -> Spend:
        """``now`` (default: the wall clock) decides which leases have expired and are reaped first."""
        state = self._tenants.get(tenant)
        if state is None:
            return Spend(spent_nano=0, reserved_nano=0)
        self._reap(state, int((time.time() if now is None else now) * 1000))
        return Spend(
            spent_nano=state.spent.get((scope.scope, scope.period_start), 0),
            reserved_nano=state.reserved.get(scope.scope, 0),
        )

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    # -- response cache ------------------------------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        return self._cached(key)

    def cache_lookup(self, key: str) -> asyncio.Future[bytes | None]:
        found: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        found.set_result(self._cached(key))
        return found

    def _cached(self, key: str) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._cache[key]
            return None
        return entry[1]

    def cache_put(self, key: str, value: bytes, ttl_s: int) -> asyncio.Future[None]:
        # Bounded by count, not bytes: answers are capped by max_tokens, and this store is for one
        # process in development; production caches live in Redis (maxmemory decides there).
        self._cache.pop(key, None)
        self._cache[key] = (time.monotonic() + ttl_s, value)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    # -- internals ------------------------------------------------------------------------------------------

    @staticmethod
    def _add(tenant: _Tenant, name: str, second: int, amount: int) -> None:
        buckets = tenant.windows.setdefault(name, {})
        buckets[second] = buckets.get(second, 0) + amount

    @staticmethod
    def _release(tenant: _Tenant, request_id: str) -> int | None:
        """Release one reservation; the second its tokens were counted in, or None if it is gone."""
        r = tenant.reservations.pop(request_id, None)
        if r is None:
            return None
        if r.cost:
            for scope in r.scopes:
                left = tenant.reserved.get(scope, 0) - r.cost
                if left > 0:
                    tenant.reserved[scope] = left
                else:
                    tenant.reserved.pop(scope, None)
        return r.second

    def _reap(self, tenant: _Tenant, now_ms: int) -> None:
        leases = tenant.leases
        while leases and leases[0][0] < now_ms:
            expiry_ms, request_id = heapq.heappop(leases)
            r = tenant.reservations.get(request_id)
            # a settled id, or one re-admitted since with a later lease, is not this lease's to reap
            if r is not None and r.expiry_ms == expiry_ms:
                self._release(tenant, request_id)

    def _sweep(self, now_ms: int) -> None:
        """Drop what Redis would have expired (stale windows, old periods), at most once a minute."""
        if now_ms < self._next_sweep_ms:
            return
        self._next_sweep_ms = now_ms + SWEEP_EVERY_MS
        now_s = now_ms // 1000
        for name in list(self._tenants):
            tenant = self._tenants[name]
            self._reap(tenant, now_ms)
            for window in [k for k, b in tenant.windows.items() if _window(b, now_s)[1] is None]:
                del tenant.windows[window]
            old = [k for k in tenant.spent if k[1] and k[1] + SPENT_RETENTION_S < now_s]
            for period in old:
                del tenant.spent[period]
            if old:
                self._changed.add(name)
            # markers are kept in the order settled: the expired ones are at the front
            done = tenant.done
            while done and (oldest := next(iter(done))) and done[oldest] <= now_ms:
                del done[oldest]
            if not (tenant.windows or tenant.spent or tenant.reservations or tenant.done):
                del self._tenants[name]

    # -- run-time keys (admin API) --------------------------------------------------------------------------

    async def put_key(self, sha256: str, record: Mapping[str, Any]) -> None:
        key_id = key_id_of(record)
        for sha in [s for s, r in self._keys.items() if r.get("id") == key_id and s != sha256]:
            del self._keys[sha]  # re-issuing a key id replaces its old secret
        self._keys[sha256] = dict(record)
        self._keys_version += 1
        if self.keys_changed is not None:
            await self.keys_changed()

    async def delete_key(self, key_id: str) -> bool:
        shas = [s for s, r in self._keys.items() if r.get("id") == key_id]
        for sha in shas:
            del self._keys[sha]
        if shas:
            self._keys_version += 1
            if self.keys_changed is not None:
                await self.keys_changed()
        return bool(shas)

    async def list_keys(self, tenant: str | None = None) -> list[dict[str, Any]]:
        records = (dict(r) for r in self._keys.values())
        return sorted(
            (r for r in records if tenant is None or r.get("tenant") == tenant), key=lambda r: str(r["id"])
        )

    async def keys_version(self) -> int:
        return self._keys_version

    async def all_keys(self) -> dict[str, dict[str, Any]]:
        return {sha: dict(r) for sha, r in self._keys.items()}

    # -- durability hooks (gateway/store/durable.py keeps these in a file across restarts) -------------------
    # What survives: spent per (scope, period) and the run-time keys. Not kept: live reservations (their
    # holders die with the process), rate-limit windows and the response cache. To keep a new per-tenant
    # field, add it to ``_dump_tenant`` and ``_load_tenant``; settle marks its tenant in ``_changed``.

    def take_changed(self) -> set[str]:
        """The tenants whose durable state changed since the last call (a tenant that is gone included)."""
        changed, self._changed = self._changed, set()
        return changed

    def dump_tenant(self, name: str) -> dict[str, Any] | None:
        """One tenant's durable state as JSON-able data, copied; None when nothing of it is left."""
        tenant = self._tenants.get(name)
        return None if tenant is None or not tenant.spent else _dump_tenant(tenant)

    def tenant_names(self) -> list[str]:
        return list(self._tenants)

    def dump_keys(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """The keys' change counter and the records (sha256 → record), copied."""
        return self._keys_version, {sha: dict(r) for sha, r in self._keys.items()}

    def restore(
        self,
        tenants: Mapping[str, Mapping[str, Any]],
        keys: Mapping[str, Mapping[str, Any]],
        keys_version: int,
    ) -> None:
        """Start from a saved state (before serving): tenants as ``dump_tenant`` made them, keys."""
        self._tenants = {name: _load_tenant(data) for name, data in tenants.items()}
        self._keys = {sha: dict(r) for sha, r in keys.items()}
        self._keys_version = keys_version
        self._changed = set()


def _dump_tenant(tenant: _Tenant) -> dict[str, Any]:
    return {"spent": [[scope, start, nano] for (scope, start), nano in tenant.spent.items()]}


def _load_tenant(data: Mapping[str, Any]) -> _Tenant:
    spent = data.get("spent", ())
    return _Tenant(spent={(str(scope), int(start)): int(nano) for scope, start, nano in spent})


def key_id_of(record: Mapping[str, Any]) -> str:
    key_id = record.get("id")
    if not isinstance(key_id, str) or not key_id:
        raise ValueError("a key record needs a non-empty string 'id'")
    return key_id
