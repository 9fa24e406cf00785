"""budgets.yaml → ``BudgetsConfig``: tenants, their keys, budgets, limits and model allow-lists."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime

from gateway.config._validate import Checker, key_path
from gateway.config.model import (
    MAX_BUDGET_USD,
    PERIODS,
    ROLES,
    Budget,
    BudgetsConfig,
    KeyConfig,
    Limits,
    RoutesConfig,
    TenantConfig,
)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TENANT_FIELDS = ("budget", "limits", "models", "keys")
_KEY_FIELDS = ("id", "sha256", "role", "budget", "limits", "models", "expires_at")


class _Seen:
    """Key ids and hashes already claimed, across every tenant: both must identify exactly one key."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.hashes: dict[str, str] = {}
        """sha256 → the key that claimed it, as ``key 'id'`` (or its path when it has no valid id)."""


def build_budgets(data: object, routes: RoutesConfig | None, c: Checker) -> BudgetsConfig:
    """Check a budgets.yaml document (already env-expanded), recording problems on ``c``.

    With ``routes``, allow-list globs that match no deployment are warned about (likely a typo or a model
    since removed); without it (routes.yaml itself is broken) only the file's own structure is checked.
    """
    top = c.record(data, "", ("tenants",), required=("tenants",)) or {}
    seen = _Seen()
    tenants: dict[str, TenantConfig] = {}
    for name, entry in c.named(top.get("tenants"), "tenants").items():
        # Tenant names become Redis key parts and metric labels.
        c.name(name, "tenants", "tenant name")
        tenants[name] = _tenant(name, entry, key_path("tenants", name), routes, seen, c)
    for server in routes.mcp_servers.values() if routes is not None else ():
        # A misspelt tenant would silently keep the server from the tenant it was meant for.
        for tenant in server.tenants or ():
            if tenant not in tenants:
                where = f"the routes file's mcp_servers.{server.name}.tenants"
                c.warn("tenants", f"{where} names {tenant!r}, which is not a tenant here")
    return BudgetsConfig(tenants=tenants)


def _tenant(
    name: str, value: object, path: str, routes: RoutesConfig | None, seen: _Seen, c: Checker
) -> TenantConfig:
    d = c.record(value, path, _TENANT_FIELDS) if value is not None else {}
    if d is None:
        return TenantConfig(name=name)
    models: tuple[str, ...] | None = None
    if "models" in d:
        models = c.names(d["models"], key_path(path, "models"))
        if routes is not None:
            for glob_path, glob in c.items(d["models"], key_path(path, "models")):
                if isinstance(glob, str) and glob and not _matches_any(glob, routes.models):
                    c.warn(glob_path, f"{glob!r} matches no model defined in the routes file")
    keys = [
        _key(name, entry, key_path_, seen, c, models, routes)
        for key_path_, entry in c.items(d.get("keys"), key_path(path, "keys"))
    ]
    return TenantConfig(
        name=name,
        budget=_budget(d.get("budget"), key_path(path, "budget"), c),
        limits=_limits(d.get("limits"), key_path(path, "limits"), c),
        models=models,
        keys=tuple(k for k in keys if k is not None),
    )


def _matches_any(glob: str, names: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, glob) for name in names)


def _key(
    tenant: str,
    value: object,
    path: str,
    seen: _Seen,
    c: Checker,
    tenant_models: tuple[str, ...] | None,
    routes: RoutesConfig | None,
) -> KeyConfig | None:
    d = c.record(value, path, _KEY_FIELDS, required=("id", "sha256"))
    if d is None:
        return None
    key_id = ""
    if "id" in d and c.name(d["id"], key_path(path, "id"), "key id"):
        key_id = str(d["id"])
        if key_id in seen.ids:
            c.error(key_path(path, "id"), f"duplicate key id {key_id!r}")
        seen.ids.add(key_id)
    digest = ""
    if "sha256" in d:
        digest = _sha256(d["sha256"], key_path(path, "sha256"), c)
        if digest in seen.hashes:
            c.error(key_path(path, "sha256"), f"duplicate sha256: same secret as {seen.hashes[digest]}")
        elif digest:
            seen.hashes[digest] = f"key {key_id!r}" if key_id else path
    return KeyConfig(
        id=key_id,
        tenant=tenant,
        sha256=digest,
        role=c.choice(d, path, "role", ROLES, "user"),
        budget=_budget(d.get("budget"), key_path(path, "budget"), c),
        limits=_limits(d.get("limits"), key_path(path, "limits"), c),
        models=_key_models(d, key_path(path, "models"), tenant_models, routes, c),
        expires_at=_expires_at(d.get("expires_at"), key_path(path, "expires_at"), c),
    )


def _key_models(
    d: dict[str, object],
    path: str,
    tenant_models: tuple[str, ...] | None,
    routes: RoutesConfig | None,
    c: Checker,
) -> tuple[str, ...] | None:
    """A key's allow-list narrows its tenant's: a glob that reaches no deployment the tenant allows is an
    error (it would silently allow nothing), checked when the routes file is readable."""
    if "models" not in d:
        return None
    models = c.names(d["models"], path)
    if routes is not None:
        allowed = [m for m in routes.models if tenant_models is None or _matches_one(m, tenant_models)]
        for glob_path, glob in c.items(d["models"], path):
            if isinstance(glob, str) and glob and not _matches_any(glob, allowed):
                c.error(glob_path, f"{glob!r} matches no model the tenant's allow-list permits")
    return models


def _matches_one(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def parse_expiry(value: object) -> float:
    """``expires_at`` as unix seconds: an ISO 8601 time (``2027-06-30T00:00:00Z``; a time without an
    offset is UTC), a YAML date or timestamp, or a number of unix seconds. ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip())
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    raise ValueError(value)


def _expires_at(value: object, path: str, c: Checker) -> float | None:
    if value is None:
        return None
    try:
        return parse_expiry(value)
    except ValueError:
        c.error(path, "must be an ISO 8601 time such as '2027-06-30T00:00:00Z'")
        return None


def _sha256(value: object, path: str, c: Checker) -> str:
    # The lookup at auth time compares lowercase hex, so uppercase input is normalised rather than refused.
    digest = value.strip().lower() if isinstance(value, str) else ""
    if not _SHA256.fullmatch(digest):
        c.error(path, "must be the hex sha256 of the secret (64 hex characters)")
        return ""
    return digest


def _budget(value: object, path: str, c: Checker) -> Budget | None:
    if value is None:
        return None
    d = c.record(value, path, ("usd", "period"), required=("usd", "period"))
    if d is None:
        return None
    return Budget(
        usd=c.number(d, path, "usd", 0.0, ge=0, le=MAX_BUDGET_USD),
        period=c.choice(d, path, "period", PERIODS, "total"),
    )


def _limits(value: object, path: str, c: Checker) -> Limits:
    if value is None:
        return Limits()
    d = c.record(value, path, ("rpm", "tpm"))
    if d is None:
        return Limits()
    return Limits(rpm=c.opt_integer(d, path, "rpm", ge=1), tpm=c.opt_integer(d, path, "tpm", ge=1))
