"""Run-time keys (issued through the admin API), kept in the store and mirrored locally.

Authentication never waits on the store: each replica polls a version counter (one tiny call every
``interval_s``) and reloads the key set when it moved, so a revoked key is refused everywhere within
about one interval, and the request path stays at one store round-trip (admission).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

from gateway.config.model import MAX_BUDGET_USD, ROLES, Budget, BudgetsConfig, Limits, Role
from gateway.pipeline.auth import Principal
from gateway.store import KeyStore
from gateway.store.base import StoreUnavailableError

log = logging.getLogger("gateway.keys")


def principal_from_record(record: Mapping[str, Any], budgets: BudgetsConfig) -> Principal | None:
    """A run-time key's principal; None when its tenant is no longer in budgets.yaml."""
    tenant = budgets.tenants.get(str(record.get("tenant")))
    if tenant is None:
        return None
    budget = record.get("budget")
    limits = record.get("limits") or {}
    models = record.get("models")
    expires = record.get("expires_at")
    role: Role = next((r for r in ROLES if r == record.get("role")), "user")
    return Principal(
        tenant=tenant.name,
        key_id=str(record["id"]),
        role=role,
        models=tenant.models,
        tenant_budget=tenant.budget,
        tenant_limits=tenant.limits,
        key_budget=Budget(_usd(budget["usd"]), budget["period"]) if isinstance(budget, dict) else None,
        key_limits=Limits(rpm=limits.get("rpm"), tpm=limits.get("tpm")),
        key_models=tuple(str(m) for m in models) if isinstance(models, list) else None,
        expires_at=float(expires) if isinstance(expires, int | float) else None,
    )


def _usd(value: Any) -> float:
    """A stored budget amount within 0..MAX_BUDGET_USD: records written before the admin API bounded
    amounts may hold ``1e308``, which no nano-USD integer can carry (every request would fail)."""
    usd = float(value)
    if math.isnan(usd):
        return 0.0
    return min(max(usd, 0.0), float(MAX_BUDGET_USD))


class RuntimeKeys:
    """The local mirror of run-time keys: sha256 → record."""

    def __init__(self, store: KeyStore, interval_s: float = 0.25) -> None:
        self._store = store
        self._interval_s = interval_s
        self._version: int | None = None
        self.records: dict[str, dict[str, Any]] = {}
        self._by_id: dict[str, dict[str, Any]] = {}

    async def refresh(self) -> bool:
        version = await self._store.keys_version()
        if version == self._version:
            return False
        self.records = await self._store.all_keys()
        self._by_id = {str(r.get("id")): r for r in self.records.values()}
        self._version = version
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except StoreUnavailableError:
                log.warning("run-time keys: store unreachable, keeping the last known keys")
            await asyncio.sleep(self._interval_s)

    def lookup(self, digest: str, budgets: BudgetsConfig) -> Principal | None:
        record = self.records.get(digest)
        return principal_from_record(record, budgets) if record is not None else None

    def lookup_id(self, key_id: str, budgets: BudgetsConfig) -> Principal | None:
        """The key a delegation token names (ids are unique across file and run-time keys)."""
        record = self._by_id.get(key_id)
        return principal_from_record(record, budgets) if record is not None else None
