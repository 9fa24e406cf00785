"""Stage 2, authenticate: the presented key becomes a principal (tenant, key id, role, allowed models).

Keys are stored as sha256 hex digests; the presented secret is hashed and the digest compared in
constant time, so neither the secret nor a timing signal about it leaves this module.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config.model import BudgetsConfig, KeyConfig, Role, TenantConfig
from gateway.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_id: str
    role: Role
    models: tuple[str, ...] | None
    """Globs over deployment names; None = all."""

    def may_use(self, deployment: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(deployment, g) for g in self.models)


class KeyIndex:
    """Keys by digest, built once per budgets.yaml version."""

    def __init__(self, budgets: BudgetsConfig) -> None:
        self._by_digest: dict[str, tuple[KeyConfig, Principal]] = {}
        for tenant in budgets.tenants.values():
            for key in tenant.keys:
                self._by_digest[key.sha256] = (key, _principal(tenant, key))

    def lookup(self, secret: str) -> Principal | None:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0].sha256, digest):
            return None
        return found[1]


def _principal(tenant: TenantConfig, key: KeyConfig) -> Principal:
    return Principal(tenant=tenant.name, key_id=key.id, role=key.role, models=tenant.models)


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
