"""Stage 3, route: (requested model, task, tenant) becomes a plan of candidate deployments.

First matching route wins; its targets are ordered by a weighted draw without replacement, then its
fallbacks in order. A request matching no route goes to the deployment it names. Deployments outside
the key's allow-list are dropped; if none remain the request is refused.
"""

from __future__ import annotations

import fnmatch
import random
from dataclasses import dataclass

from gateway.config.model import CachePolicy, ContentLogPolicy, ModelConfig, RetryPolicy, Route, RoutesConfig
from gateway.errors import NotFound, PermissionDenied
from gateway.logs import clip
from gateway.memo import Memo
from gateway.pipeline.auth import Principal
from gateway.plugins.stage import RouteHooks, compile_route

DEFAULT_ROUTE = "default"


@dataclass(frozen=True, slots=True)
class Plan:
    route: str
    candidates: tuple[ModelConfig, ...]
    timeout_s: float
    retry: RetryPolicy
    cache: CachePolicy | None
    hooks: RouteHooks | None
    """The route's plugins compiled (``gateway/plugins/stage.py``); None: the hook stages are skipped."""
    log_content: ContentLogPolicy | None = None
    """Set when the route opted in to logging (redacted) prompt and answer text."""


class Router:
    def __init__(self, config: RoutesConfig, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()
        # Plans with no weighted draw in them, by (model, task, key id): the same request shape gets
        # the same plan, so it is worked out once (globs and allow-lists included).
        # Compiled once per config version: a request asks only ``plan.hooks is None``.
        self._hooks = {r.name: compile_route(r, config.plugins) for r in config.routes}
        self._plans: Memo[tuple[str, str | None, str | None], Plan] = Memo(10_000)

    def match(self, model: str, task: str | None, tenant: str | None) -> Route | None:
        for route in self._config.routes:
            m = route.match
            if m.task is not None and m.task != task:
                continue
            if m.tenant is not None and m.tenant != tenant:
                continue
            if m.model is not None and not fnmatch.fnmatchcase(model, m.model):
                continue
            return route
        return None

    def plan(self, model: str, task: str | None, principal: Principal | None) -> Plan:
        key = (model, task, principal.key_id if principal else None)
        kept = self._plans.get(key, principal)
        if kept is not None:
            return kept
        tenant = principal.tenant if principal else None
        route = self.match(model, task, tenant)
        defaults = self._config.defaults
        if route is None:
            deployment = self._config.models.get(model)
            if deployment is None:
                raise NotFound(
                    f"The model '{clip(model)}' does not exist.", param="model", code="model_not_found"
                )
            names: list[str] = [model]
            hooks: RouteHooks | None = None
            name, cache, timeout, retry = DEFAULT_ROUTE, None, defaults.timeout_s, defaults.retry
            log_content = None
        else:
            names = self._ordered_targets(route) + list(route.fallbacks)
            name, cache, hooks = route.name, route.cache, self._hooks[route.name]
            timeout = route.timeout_s or defaults.timeout_s
            retry = route.retry or defaults.retry
            log_content = route.log_content
        seen: set[str] = set()
        candidates = []
        for n in names:
            if n in seen or (principal is not None and not principal.may_use(n)):
                continue
            seen.add(n)
            candidates.append(self._config.models[n])
        if not candidates:
            raise _denied(model, names, route)
        plan = Plan(name, tuple(candidates), timeout, retry, cache, hooks, log_content)
        if route is None or len(route.targets) == 1:  # no draw: the same plan every time
            self._plans.put(key, principal, plan)
        return plan

    def _ordered_targets(self, route: Route) -> list[str]:
        pool = list(route.targets)
        if len(pool) == 1:
            return [pool[0].model]
        ordered: list[str] = []
        while pool:
            pick = self._rng.choices(range(len(pool)), weights=[t.weight for t in pool])[0]
            ordered.append(pool.pop(pick).model)
        return ordered

    def reachable(self, principal: Principal) -> dict[str, list[str]]:
        """Client-visible model names → the allowed deployments they lead to, for ``/v1/models``.

        A name is listed only if a request for it (without a task header) would be served: it goes
        through the route that would match it, exactly as ``plan`` does, so a deployment the key may
        use is not listed when a route sends its name elsewhere (to a deployment the key may not use).
        """
        named = list(self._config.models)
        for route in self._config.routes:
            m = route.match
            if m.model is not None and not any(ch in m.model for ch in "*?[") and m.task is None:
                named.append(m.model)
        out: dict[str, list[str]] = {}
        for name in named:
            if name in out:
                continue
            matched = self.match(name, None, principal.tenant)
            if matched is None:
                targets = [name] if name in self._config.models else []
            else:
                targets = [t.model for t in matched.targets] + list(matched.fallbacks)
            allowed = [t for t in dict.fromkeys(targets) if principal.may_use(t)]
            if allowed:
                out[name] = allowed
        return out


def _denied(model: str, names: list[str], route: Route | None) -> PermissionDenied:
    """The 403 for a request whose every deployment the key may not use, naming them: the model asked
    for may be allowed itself and still be routed to one that is not."""
    blocked = ", ".join(f"'{n}'" for n in dict.fromkeys(names))
    if route is None:
        why = f"the key's allowed models do not include {blocked}"
    else:
        plural = "s" if len(set(names)) > 1 else ""
        why = f"route '{route.name}' sends it to deployment{plural} {blocked}, which the key may not use"
    return PermissionDenied(
        f"This key is not allowed to use the model '{clip(model)}': {why}.", param="model"
    )
