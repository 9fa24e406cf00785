"""What the router would do with a request: the matching route and its ordered plan, as text."""

from __future__ import annotations

from gateway.config.model import Route, RoutesConfig
from gateway.pipeline.auth import Principal
from gateway.pipeline.route import DEFAULT_ROUTE, Router


def explain(routes: RoutesConfig, model: str, task: str | None, principal: Principal | None) -> list[str]:
    router = Router(routes)
    route = router.match(model, task, principal.tenant if principal else None)
    lines = [f"request: model={model!r} task={task!r} tenant={principal.tenant if principal else None!r}"]
    if route is None:
        if model not in routes.models:
            return [
                *lines,
                f"route: none matches and no deployment is named {model!r} -> 404 model_not_found",
                "result: 404 model_not_found",
            ]
        lines.append(f"route: {DEFAULT_ROUTE} (no rule matched; the deployment named by the request)")
        entries = [(model, "requested")]
    else:
        lines.append(f"route: {route.name} (match {_match_text(route)})")
        entries = _plan_entries(route)
    lines.append("plan:")
    allowed = 0
    for n, (name, why) in enumerate(entries, 1):
        deployment = routes.models[name]
        refused = principal is not None and not principal.may_use(name)
        allowed += not refused
        mark = "  [not allowed for this key: skipped]" if refused else ""
        lines.append(f"  {n}. {name} -> {deployment.provider}:{deployment.upstream}  ({why}){mark}")
    if allowed == 0:
        lines.append(f"result: 403, this key may use none of the deployments for {model!r}")
    defaults = routes.defaults
    timeout = route.timeout_s if route and route.timeout_s else defaults.timeout_s
    retry = route.retry if route and route.retry else defaults.retry
    lines.append(
        f"policy: timeout_s={timeout:g} retry.attempts={retry.attempts} "
        f"cache={_cache_text(route)} plugins={[p.name for p in route.plugins] if route else []}"
    )
    if route is not None:
        lines.extend(plugin_lines(route, routes))
    return lines


def refused(lines: list[str]) -> bool:
    """Whether ``explain``'s plan is one the gateway would refuse (404 or 403)."""
    return any(line.startswith("result: ") for line in lines)


def route_plugins(route: Route, routes: RoutesConfig) -> list[dict[str, object]]:
    """The route's plugins for ``POST /admin/explain``, in route order (the token is never shown)."""
    out: list[dict[str, object]] = []
    for entry in route.plugins:
        plugin = routes.plugins[entry.name]
        out.append(
            {
                "name": entry.name,
                "hooks": list(plugin.hooks),
                "on_error": plugin.on_error,
                "timeout_s": plugin.timeout_s,
                "post_stream": entry.post_stream if "post" in plugin.hooks else None,
                "options": dict(entry.options),
            }
        )
    return out


def plugin_lines(route: Route, routes: RoutesConfig) -> list[str]:
    """The route's plugins as they run: pre hooks in route order, post hooks in reverse."""
    if not route.plugins:
        return []
    lines = ["plugins (pre hooks in this order, post hooks in reverse):"]
    for n, entry in enumerate(route.plugins, 1):
        plugin = routes.plugins[entry.name]
        post = f" post_stream={entry.post_stream}" if "post" in plugin.hooks else ""
        lines.append(
            f"  {n}. {entry.name} hooks={list(plugin.hooks)} on_error={plugin.on_error} "
            f"timeout_s={plugin.timeout_s:g}{post} options={dict(entry.options)}"
        )
    return lines


def _plan_entries(route: Route) -> list[tuple[str, str]]:
    total = sum(t.weight for t in route.targets)
    entries = [
        (t.model, f"target, weight {t.weight:g} = {100 * t.weight / total:.0f}% first") for t in route.targets
    ]
    entries += [(f, "fallback") for f in route.fallbacks]
    return entries


def _match_text(route: Route) -> str:
    m = route.match
    parts = [
        f"{k}={v!r}" for k, v in (("task", m.task), ("model", m.model), ("tenant", m.tenant)) if v is not None
    ]
    return " ".join(parts) or "anything"


def _cache_text(route: Route | None) -> str:
    if route is None or route.cache is None:
        return "off"
    return f"ttl {route.cache.ttl_s}s {route.cache.mode}"
