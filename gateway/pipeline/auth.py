"""Stage 2, authenticate: the presented key becomes a principal (tenant, key id, role, allowed models).

Keys are stored as sha256 hex digests; the presented secret is hashed and the digest compared in
constant time, so neither the secret nor a timing signal about it leaves this module.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.config.model import Budget, BudgetsConfig, KeyConfig, Limits, Role, TenantConfig
from gateway.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_id: str
    role: Role
    models: tuple[str, ...] | None
    """Globs over deployment names; None = all."""
    tenant_budget: Budget | None = None
    tenant_limits: Limits = field(default_factory=Limits)
    key_budget: Budget | None = None
    key_limits: Limits = field(default_factory=Limits)

    def may_use(self, deployment: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(deployment, g) for g in self.models)


RuntimeLookup = Callable[[str, BudgetsConfig], Principal | None]
"""Run-time keys (admin API) by digest, given the budgets they inherit tenant settings from."""


class KeyIndex:
    """Keys by digest, built once per budgets.yaml version, then run-time keys."""

    def __init__(self, budgets: BudgetsConfig, runtime: RuntimeLookup | None = None) -> None:
        self._budgets = budgets
        self._runtime = runtime
        self._by_digest: dict[str, tuple[KeyConfig, Principal]] = {}
        for tenant in budgets.tenants.values():
            for key in tenant.keys:
                self._by_digest[key.sha256] = (key, _principal(tenant, key))

    def lookup(self, secret: str) -> Principal | None:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        found = self._by_digest.get(digest)
        if found is not None and hmac.compare_digest(found[0].sha256, digest):
            return found[1]
        return self._runtime(digest, self._budgets) if self._runtime is not None else None

    def file_key_ids(self) -> set[str]:
        return {key.id for key, _ in self._by_digest.values()}


def _principal(tenant: TenantConfig, key: KeyConfig) -> Principal:
    return Principal(
        tenant=tenant.name,
        key_id=key.id,
        role=key.role,
        models=tenant.models,
        tenant_budget=tenant.budget,
        tenant_limits=tenant.limits,
        key_budget=key.budget,
        key_limits=key.limits,
    )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The bearer token, or Anthropic's ``x-api-key`` (0.x SDKs send that)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def authenticate(headers: Mapping[str, str], keys: KeyIndex) -> Principal:
    secret = presented_key(headers)
    if secret is None:
        raise AuthenticationFailed(
            "You didn't provide an API key. Pass your gateway key as 'Authorization: Bearer <key>'."
        )
    principal = keys.lookup(secret)
    if principal is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    return principal
