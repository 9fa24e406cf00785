"""Process settings: command-line flags over ``GATEWAY_*`` environment variables over defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

STATE_FILE_ENV = "GATEWAY_STATE_FILE"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    routes_path: str = "routes.yaml"
    budgets_path: str = "budgets.yaml"
    redis_url: str | None = None
    cache_redis_url: str | None = None
    """The response cache on its own Redis (eviction allowed there); None: on ``redis_url``'s."""
    admin_key: str | None = None
    delegation_secret: str | None = None
    """``GATEWAY_DELEGATION_SECRET``: comma-separated, the first signs, all verify (gateway/delegation.py).
    None: a process that runs alone makes its own at start."""
    reload_interval_s: float = 0.5
    state_file: str | None = None
    """The in-process store's state file (no Redis): spend and run-time keys survive a restart. None
    keeps them in memory only. ``from_env`` defaults it to ``.gateway/state.sqlite3`` beside budgets.yaml."""
    ledger_url: str | None = None
    """The spend ledger's database (gateway/ledger); None: no ledger. ``from_env`` reads
    ``GATEWAY_LEDGER_URL`` and, unset without Redis, defaults to ``.gateway/ledger.sqlite3``."""
    # Connection limits (gateway/limits.py, README "Limits"): what one client connection may hold.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    body_min_rate: int = 500  # bytes/s: each 500 bytes received extend the body timeout by 1 s
    keepalive_timeout_s: float = 5.0
    max_header_bytes: int = 65536
    max_headers: int = 100
    max_url_bytes: int = 16384
    max_connections: int = 10000  # per worker process
    # The admin listener (README "Admin listener"): when a port is set, /admin/* and /metrics are served
    # there only and answer 404 on the public port.
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"
    metrics_token: str | None = None
    """``GATEWAY_METRICS_TOKEN``: /metrics then wants ``Authorization: Bearer <token>`` (401 without)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        base = cls()
        budgets_path = env.get("GATEWAY_BUDGETS", base.budgets_path)
        state_file = env.get(STATE_FILE_ENV)
        redis_url = env.get("GATEWAY_REDIS_URL") or None
        limits: dict[str, Any] = {
            name: kind(env[var]) for name, (var, kind) in LIMIT_ENV.items() if env.get(var)
        }
        return replace(
            base,
            host=env.get("GATEWAY_HOST", base.host),
            port=int(env.get("GATEWAY_PORT", base.port)),
            workers=int(env.get("GATEWAY_WORKERS", base.workers)),
            routes_path=env.get("GATEWAY_ROUTES", base.routes_path),
            budgets_path=budgets_path,
            redis_url=redis_url,
            cache_redis_url=env.get("GATEWAY_CACHE_REDIS_URL") or None,
            admin_key=env.get("GATEWAY_ADMIN_KEY") or None,
            delegation_secret=env.get("GATEWAY_DELEGATION_SECRET") or None,
            admin_port=int(env["GATEWAY_ADMIN_PORT"]) if env.get("GATEWAY_ADMIN_PORT") else None,
            admin_host=env.get("GATEWAY_ADMIN_HOST") or base.admin_host,
            metrics_token=env.get("GATEWAY_METRICS_TOKEN") or None,
            reload_interval_s=float(env.get("GATEWAY_RELOAD_INTERVAL_S", base.reload_interval_s)),
            # unset: the default beside budgets.yaml; set but empty: memory only
            state_file=default_state_file(budgets_path) if state_file is None else state_file or None,
            ledger_url=ledger_url(env.get(LEDGER_URL_ENV), budgets_path, redis_url),
            **limits,
        )

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a worker process."""
        env = {
            "GATEWAY_HOST": self.host,
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_WORKERS": str(self.workers),
            "GATEWAY_ROUTES": self.routes_path,
            "GATEWAY_BUDGETS": self.budgets_path,
            "GATEWAY_RELOAD_INTERVAL_S": str(self.reload_interval_s),
            STATE_FILE_ENV: self.state_file or "",
        }
        env.update({var: str(getattr(self, name)) for name, (var, _) in LIMIT_ENV.items()})
        env[LEDGER_URL_ENV] = self.ledger_url or "off"
        if self.redis_url:
            env["GATEWAY_REDIS_URL"] = self.redis_url
        if self.cache_redis_url:
            env["GATEWAY_CACHE_REDIS_URL"] = self.cache_redis_url
        if self.admin_key:
            env["GATEWAY_ADMIN_KEY"] = self.admin_key
        if self.delegation_secret:
            env["GATEWAY_DELEGATION_SECRET"] = self.delegation_secret
        if self.admin_port is not None:
            env["GATEWAY_ADMIN_PORT"] = str(self.admin_port)
            env["GATEWAY_ADMIN_HOST"] = self.admin_host
        if self.metrics_token:
            env["GATEWAY_METRICS_TOKEN"] = self.metrics_token
        return env


def default_state_file(budgets_path: str) -> str:
    """``.gateway/state.sqlite3`` in the directory of budgets.yaml: the state of the tenants it lists."""
    return str(Path(budgets_path).resolve().parent / ".gateway" / "state.sqlite3")


LEDGER_URL_ENV = "GATEWAY_LEDGER_URL"


def ledger_url(given: str | None, budgets_path: str, redis_url: str | None) -> str | None:
    """``GATEWAY_LEDGER_URL``: a URL; ``off``; or unset: SQLite beside budgets.yaml without Redis,
    none with Redis (a file per replica would not be one ledger; see gateway/ledger/__init__.py)."""
    if given:
        return None if given.strip().lower() == "off" else given.strip()
    if redis_url is not None:
        return None
    return "sqlite:///" + str(Path(budgets_path).resolve().parent / ".gateway" / "ledger.sqlite3")


# Settings field -> (environment variable, type); each also has a ``serve`` flag (gateway/cli.py).
LIMIT_ENV: dict[str, tuple[str, type[int] | type[float]]] = {
    "header_timeout_s": ("GATEWAY_HEADER_TIMEOUT_S", float),
    "body_timeout_s": ("GATEWAY_BODY_TIMEOUT_S", float),
    "body_min_rate": ("GATEWAY_BODY_MIN_RATE", int),
    "keepalive_timeout_s": ("GATEWAY_KEEPALIVE_TIMEOUT_S", float),
    "max_header_bytes": ("GATEWAY_MAX_HEADER_BYTES", int),
    "max_headers": ("GATEWAY_MAX_HEADERS", int),
    "max_url_bytes": ("GATEWAY_MAX_URL_BYTES", int),
    "max_connections": ("GATEWAY_MAX_CONNECTIONS", int),
}
