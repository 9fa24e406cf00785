"""Process settings: command-line flags over ``GATEWAY_*`` environment variables over defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace


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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        base = cls()
        return replace(
            base,
            host=env.get("GATEWAY_HOST", base.host),
            port=int(env.get("GATEWAY_PORT", base.port)),
            workers=int(env.get("GATEWAY_WORKERS", base.workers)),
            routes_path=env.get("GATEWAY_ROUTES", base.routes_path),
            budgets_path=env.get("GATEWAY_BUDGETS", base.budgets_path),
            redis_url=env.get("GATEWAY_REDIS_URL") or None,
            cache_redis_url=env.get("GATEWAY_CACHE_REDIS_URL") or None,
            admin_key=env.get("GATEWAY_ADMIN_KEY") or None,
            reload_interval_s=float(env.get("GATEWAY_RELOAD_INTERVAL_S", base.reload_interval_s)),
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
        }
        if self.redis_url:
            env["GATEWAY_REDIS_URL"] = self.redis_url
        if self.cache_redis_url:
            env["GATEWAY_CACHE_REDIS_URL"] = self.cache_redis_url
        if self.admin_key:
            env["GATEWAY_ADMIN_KEY"] = self.admin_key
        return env
