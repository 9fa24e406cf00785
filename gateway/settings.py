"""Process settings: command-line flags over ``GATEWAY_*`` environment variables over defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

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
    reload_interval_s: float = 0.5
    state_file: str | None = None
    """The in-process store's state file (no Redis): spend and run-time keys survive a restart. None
    keeps them in memory only. ``from_env`` defaults it to ``.gateway/state.sqlite3`` beside budgets.yaml."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        base = cls()
        budgets_path = env.get("GATEWAY_BUDGETS", base.budgets_path)
        state_file = env.get(STATE_FILE_ENV)
        return replace(
            base,
            host=env.get("GATEWAY_HOST", base.host),
            port=int(env.get("GATEWAY_PORT", base.port)),
            workers=int(env.get("GATEWAY_WORKERS", base.workers)),
            routes_path=env.get("GATEWAY_ROUTES", base.routes_path),
            budgets_path=budgets_path,
            redis_url=env.get("GATEWAY_REDIS_URL") or None,
            cache_redis_url=env.get("GATEWAY_CACHE_REDIS_URL") or None,
            admin_key=env.get("GATEWAY_ADMIN_KEY") or None,
            reload_interval_s=float(env.get("GATEWAY_RELOAD_INTERVAL_S", base.reload_interval_s)),
            # unset: the default beside budgets.yaml; set but empty: memory only
            state_file=default_state_file(budgets_path) if state_file is None else state_file or None,
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
        if self.redis_url:
            env["GATEWAY_REDIS_URL"] = self.redis_url
        if self.cache_redis_url:
            env["GATEWAY_CACHE_REDIS_URL"] = self.cache_redis_url
        if self.admin_key:
            env["GATEWAY_ADMIN_KEY"] = self.admin_key
        return env


def default_state_file(budgets_path: str) -> str:
    """``.gateway/state.sqlite3`` in the directory of budgets.yaml: the state of the tenants it lists."""
    return str(Path(budgets_path).resolve().parent / ".gateway" / "state.sqlite3")
