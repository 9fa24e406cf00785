"""Stage 2, authenticate: the presented key becomes a principal (tenant, key id, role, allowed models).

Keys are stored as sha256 hex digests; the presented secret is hashed and the digest compared in
constant time, so neither the secret nor a timing signal about it leaves this module.

A delegation token (``gwd1.…``, gateway/delegation.py) becomes the principal of the key it names, with
role ``user`` and the parent request's id: a sidecar's call is limited, budgeted and priced as the
original caller's. Why a token was refused goes to the log, never to the client.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway import delegation
from gateway.config.model import Budget, BudgetsConfig, KeyConfig, Limits, Role, TenantConfig
from gateway.errors import AuthenticationFailed, PermissionDenied

log = logging.getLogger("gateway.auth")
_TOKEN_PREFIX = delegation.PREFIX


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
    key_models: tuple[str, ...] | None = None
    """The key's own allow-list, inside the tenant's (``models``): a deployment needs both."""
    expires_at: float | None = None
    """Unix seconds from which the key is refused (401)."""
    parent_request_id: str | None = None
    """Set when the call was made with a delegation token: the request that handed it out."""
    delegation_token: str | None = None
    """That token itself: a delegated request hands its hooks the same token, never a new one."""
    delegation_expires_at: int | None = None
    """And its expiry (unix seconds)."""

    def may_use(self, deployment: str) -> bool:
        return (self.models is None or any(fnmatch.fnmatchcase(deployment, g) for g in self.models)) and (
            self.key_models is None or any(fnmatch.fnmatchcase(deployment, g) for g in self.key_models)
        )

    @property
    def delegated(self) -> bool:
        return self.parent_request_id is not None


RuntimeLookup = Callable[[str, BudgetsConfig], Principal | None]
"""Run-time keys (admin API) by digest, given the budgets they inherit tenant settings from."""
RuntimeById = Callable[[str, BudgetsConfig], Principal | None]
"""Run-time keys by id: the key a delegation token names."""


class KeyIndex:
    """Keys by digest, built once per budgets.yaml version, then run-time keys; delegation tokens checked
    with ``delegation_secrets`` (the first signs, every one verifies: a rotation's overlap)."""

    def __init__(
        self,
        budgets: BudgetsConfig,
        runtime: RuntimeLookup | None = None,
        *,
        runtime_by_id: RuntimeById | None = None,
        delegation_secrets: tuple[bytes, ...] = (),
    ) -> None:
        self._budgets = budgets
        self._runtime = runtime
        self._runtime_by_id = runtime_by_id
        self.delegation_secrets = delegation_secrets
        self._by_digest: dict[str, tuple[KeyConfig, Principal]] = {}
        self._by_id: dict[str, Principal] = {}
        for tenant in budgets.tenants.values():
            for key in tenant.keys:
                principal = _principal(tenant, key)
                self._by_digest[key.sha256] = (key, principal)
                self._by_id[key.id] = principal

    def lookup(self, secret: str) -> Principal | None:
        if secret.startswith(_TOKEN_PREFIX):  # delegation.is_token, without the call
            return self._delegated(secret)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        found = self._by_digest.get(digest)
        if found is not None and hmac.compare_digest(found[0].sha256, digest):
            return found[1]
        return self._runtime(digest, self._budgets) if self._runtime is not None else None

    def by_id(self, key_id: str) -> Principal | None:
        found = self._by_id.get(key_id)
        if found is None and self._runtime_by_id is not None:
            found = self._runtime_by_id(key_id, self._budgets)
        return found

    def _delegated(self, token: str) -> Principal | None:
        """The named key's principal as a ``user`` call with the parent request's id; None (401) for a
        forged, malformed or expired token, or one whose key is gone, expired or moved tenant."""
        now = time.time()
        reason = "no delegation secret configured"
        for secret in self.delegation_secrets:
            try:
                d = delegation.verify(secret, token, now)
            except delegation.InvalidToken as exc:
                reason = str(exc)
                if reason != "bad signature":
                    break  # signed by this secret: another secret cannot change the verdict
                continue
            key = self.by_id(d.key_id)
            if key is None or key.tenant != d.tenant:
                reason = f"key {d.key_id!r} of tenant {d.tenant!r} no longer exists"
                break
            if key.expires_at is not None and now >= key.expires_at:
                reason = f"key {d.key_id!r} expired"
                break
            return dataclasses.replace(
                key,
                role="user",
                parent_request_id=d.parent_request_id,
                delegation_token=token,
                delegation_expires_at=d.expires_at,
            )
        log.warning("delegation token refused: %s", reason)
        return None

    def file_key_ids(self) -> set[str]:
        return set(self._by_id)


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
        key_models=key.models,
        expires_at=key.expires_at,
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


def for_proxy(principal: Principal) -> Principal:
    """A principal the proxy endpoints (``/v1/*`` model calls and ``/v1/models``) serve: every role
    but ``reviewer``, whose keys reach the review surfaces only."""
    if principal.role == "reviewer":
        raise PermissionDenied(
            "A reviewer key works only on the review surfaces (/v1/plugins/review/...).",
            code="permission_denied",
        )
    return principal


def authenticate(headers: Mapping[str, str], keys: KeyIndex) -> Principal:
    secret = presented_key(headers)
    if secret is None:
        raise AuthenticationFailed(
            "You didn't provide an API key. Pass your gateway key as 'Authorization: Bearer <key>'."
        )
    principal = keys.lookup(secret)
    if principal is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    if principal.expires_at is not None and time.time() >= principal.expires_at:
        when = datetime.fromtimestamp(principal.expires_at, UTC).isoformat()
        raise AuthenticationFailed(f"This API key expired at {when}.")
    return principal
