"""Hot reload: poll both config files and swap in a new runtime when one changes.

A file is re-read when its stat signature changes (mtime, size, inode: a Kubernetes ConfigMap
update swaps a symlink, which changes the inode). A file that fails validation is refused: the
errors are logged, ``gateway_config_reload_total{result="error"}`` counts it, and the old runtime
keeps serving. Recorded spend lives in the store, not in the runtime, so it survives any reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from gateway.config.model import BudgetsConfig, RoutesConfig
from gateway.config.parse import ConfigError, load_budgets, load_routes
from gateway.metrics import Metrics
from gateway.runtime import Runtime, Shared, build_runtime

log = logging.getLogger("gateway.config")

Signature = tuple[int, int, int] | None


def signature(path: str) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def load(routes_path: str, budgets_path: str) -> tuple[RoutesConfig, BudgetsConfig]:
    """Load and validate both files, raising ConfigError with every problem found."""
    errors: list[str] = []
    routes: RoutesConfig | None = None
    try:
        routes, warnings = load_routes(routes_path)
        _warn(warnings)
    except ConfigError as exc:
        errors.extend(exc.errors)
    try:
        budgets, warnings = load_budgets(budgets_path, routes)
        _warn(warnings)
    except ConfigError as exc:
        errors.extend(exc.errors)
    if errors or routes is None:
        raise ConfigError(errors)
    return routes, budgets


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        log.warning("config warning: %s", w)


class ConfigWatcher:
    def __init__(
        self,
        routes_path: str,
        budgets_path: str,
        shared: Shared,
        metrics: Metrics,
        publish: Callable[[Runtime], None],
        current: Runtime,
        interval_s: float = 0.5,
    ) -> None:
        self._paths = {"routes": routes_path, "budgets": budgets_path}
        self._shared = shared
        self._metrics = metrics
        self._publish = publish
        self._current = current
        self._interval_s = interval_s
        self._seen = {name: signature(p) for name, p in self._paths.items()}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self.poll()

    def poll(self) -> bool:
        """Reload if either file changed; True when a new runtime was published."""
        changed = [name for name, p in self._paths.items() if signature(p) != self._seen[name]]
        if not changed:
            return False
        for name in changed:
            self._seen[name] = signature(self._paths[name])
        return not self.reload(changed)

    def reload(self, files: list[str] | None = None) -> list[str]:
        """Re-read both files; the errors if the new version was refused, else []."""
        files = files or list(self._paths)
        try:
            routes, budgets = load(self._paths["routes"], self._paths["budgets"])
            current = build_runtime(routes, budgets, self._shared)
        except ConfigError as exc:
            for name in files:
                self._metrics.config_reload.labels(name, "error").inc()
            for line in exc.errors:
                log.error("config reload refused, keeping the previous config: %s", line)
            return exc.errors
        self._current = current
        self._publish(self._current)
        for name in files:
            self._metrics.config_reload.labels(name, "success").inc()
        log.info("config reloaded: %s", ", ".join(files))
        return []
