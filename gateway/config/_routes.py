"""routes.yaml → ``RoutesConfig``: providers, models, defaults, routes and plugins, checked with paths
(``mcp_servers`` and ``tool_policy`` in ``_tools``)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import ssl
from typing import Literal

from gateway.config._tools import mcp_servers, tool_policy
from gateway.config._validate import Checker, index_path, key_path
from gateway.config.model import (
    DEFAULT_LOG_CHARS,
    BreakerPolicy,
    CachePolicy,
    ContentLogPolicy,
    Defaults,
    HookName,
    Match,
    MemoryPolicy,
    ModelConfig,
    PluginConfig,
    PostStream,
    Price,
    ProviderConfig,
    RetryPolicy,
    Route,
    RoutePlugin,
    RoutesConfig,
    Target,
    TlsConfig,
    UpstreamLimits,
)
from gateway.egress import tls_context

PROVIDER_TYPES = ("openai", "openai_responses", "azure", "azure_responses", "anthropic", "mock")
MOCK_FAULTS = ("none", "429", "500", "503", "timeout", "disconnect")
AZURE_API_VERSION = "2024-10-21"
ANTHROPIC_BASE_URL = "https://api.anthropic.com"

_TOP = ("providers", "defaults", "models", "routes", "plugins", "mcp_servers", "tool_policy")
_COMMON = ("type", "base_url", "api_key", "headers", "timeout_s", "limits", "tls")
_TLS = ("ca_file", "cert_file", "key_file", "verify")
_LIMITS = tuple(UpstreamLimits.__dataclass_fields__)
_MIN_LIMIT = 1024  # below a kilobyte no real answer fits: surely a slip
_AZURE_ONLY = ("api_version",)
_MOCK_ONLY = ("latency_ms", "fault", "fault_rate")
_NEEDS_BASE_URL = ("openai", "openai_responses", "azure", "azure_responses")
_AZURE_TYPES = ("azure", "azure_responses")
_STORE_FAILURE: tuple[Literal["closed", "open"], ...] = ("closed", "open")
_ON_ERROR: tuple[Literal["open", "closed"], ...] = ("open", "closed")
_HOOKS: tuple[HookName, ...] = ("pre", "post", "tool")
_CACHE_MODES: tuple[Literal["deterministic", "always"], ...] = ("deterministic", "always")


def build_routes(data: object, c: Checker) -> RoutesConfig:
    """Check a routes.yaml document (already env-expanded), recording problems on ``c``."""
    top = c.record(data, "", _TOP, required=("providers", "models")) or {}
    providers = _providers(top.get("providers"), c)
    plugins = _plugins(top.get("plugins"), c)
    models = _models(top.get("models"), providers, c)
    defaults = _defaults(top.get("defaults"), c)
    providers = _with_limits(top.get("providers"), providers, defaults.upstream_limits, c)
    routes = _routes(top.get("routes"), models, plugins, defaults.retry, c)
    servers = mcp_servers(top.get("mcp_servers"), c)
    return RoutesConfig(
        providers=providers,
        models=models,
        routes=routes,
        defaults=defaults,
        plugins=plugins,
        mcp_servers=servers,
        tool_policy=tool_policy(top.get("tool_policy"), servers, c),
    )


# -- providers ------------------------------------------------------------------------------------------


def _providers(value: object, c: Checker) -> dict[str, ProviderConfig]:
    out: dict[str, ProviderConfig] = {}
    for name, entry in c.named(value, "providers").items():
        path = key_path("providers", name)
        # Every provider name is kept, even a broken one, so models naming it are not also reported.
        out[name] = _provider(name, entry, path, c)
    return out


def _provider(name: str, value: object, path: str, c: Checker) -> ProviderConfig:
    d = c.record(value, path, _COMMON + _AZURE_ONLY + _MOCK_ONLY, required=("type",))
    if d is None:
        return ProviderConfig(name=name, type="")
    kind = c.choice(d, path, "type", PROVIDER_TYPES, "")
    version = d.get("api_version")
    if isinstance(version, datetime.date):
        d["api_version"] = version.isoformat()  # YAML reads a bare 2024-10-21 as a date
    if kind:
        # Type-specific fields on another type are almost always a copy-paste slip (fault injection left on
        # a real provider), so they are errors rather than silently ignored.
        for key in _AZURE_ONLY if kind not in _AZURE_TYPES else ():
            if key in d:
                c.error(key_path(path, key), "only valid for type azure or azure_responses")
        for key in _MOCK_ONLY if kind != "mock" else ():
            if key in d:
                c.error(key_path(path, key), "only valid for type mock")
    base_url = c.url(d, path, "base_url")
    if kind in _NEEDS_BASE_URL and "base_url" not in d:
        c.error(key_path(path, "base_url"), f"is required for type {kind}")
    if kind == "anthropic" and not base_url:
        base_url = ANTHROPIC_BASE_URL
    azure = kind in _AZURE_TYPES
    api_version = c.text(d, path, "api_version", AZURE_API_VERSION, nonempty=True) if azure else ""
    return ProviderConfig(
        name=name,
        type=kind,
        base_url=base_url,
        api_key=c.text(d, path, "api_key"),
        headers=_headers(d.get("headers"), key_path(path, "headers"), c),
        timeout_s=c.opt_number(d, path, "timeout_s", gt=0),
        api_version=api_version,
        options=_mock_options(d, path, c) if kind == "mock" else {},
        tls=_tls(d.get("tls"), key_path(path, "tls"), c) if "tls" in d else None,
    )


def _tls(value: object, path: str, c: Checker) -> TlsConfig | None:
    """``tls: {ca_file, cert_file, key_file, verify}``; the files must exist and be readable now, not at
    the first request, and each must load (a PEM that OpenSSL refuses is reported here)."""
    d = c.record(value, path, _TLS)
    if d is None:
        return None
    before = len(c.errors)
    files = {key: c.text(d, path, key, nonempty=True) for key in _TLS[:3] if key in d}
    for key, name in files.items():
        if name and not os.access(name, os.R_OK):
            c.error(key_path(path, key), f"cannot read {name!r}")
    verify = d.get("verify", True)
    if not isinstance(verify, bool):
        c.error(key_path(path, "verify"), "must be true or false")
        verify = True
    if "key_file" in files and "cert_file" not in files:
        c.error(key_path(path, "key_file"), "needs cert_file (the client certificate it belongs to)")
    if "ca_file" in files and not verify:
        c.error(key_path(path, "ca_file"), "has no effect with verify: false")
    tls = TlsConfig(
        ca_file=files.get("ca_file", ""),
        cert_file=files.get("cert_file", ""),
        key_file=files.get("key_file", ""),
        verify=verify,
    )
    if len(c.errors) == before:
        try:
            tls_context(tls)
        except (ssl.SSLError, OSError) as exc:
            c.error(path, f"cannot load the certificates: {exc}")
    return tls


def _with_limits(
    value: object, providers: dict[str, ProviderConfig], base: UpstreamLimits, c: Checker
) -> dict[str, ProviderConfig]:
    """Each provider's ``limits``: ``defaults.upstream_limits`` with the provider's own fields laid over."""
    entries = value if isinstance(value, dict) else {}
    out = {}
    for name, config in providers.items():
        entry = entries.get(name)
        own = entry.get("limits") if isinstance(entry, dict) else None
        out[name] = dataclasses.replace(
            config, limits=_limits(own, key_path(key_path("providers", name), "limits"), base, c)
        )
    return out


def _limits(value: object, path: str, base: UpstreamLimits, c: Checker) -> UpstreamLimits:
    """Upstream answer limits; fields left out are taken from ``base``."""
    if value is None:
        return base
    d = c.record(value, path, _LIMITS)
    if d is None:
        return base
    given = {key: c.integer(d, path, key, getattr(base, key), ge=_MIN_LIMIT) for key in _LIMITS}
    return UpstreamLimits(**given)


def _headers(value: object, path: str, c: Checker) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, item in c.named(value, path).items():
        text = c.as_text(item, key_path(path, key))
        if text is not None:
            out[key] = text
    return out


def _mock_options(d: dict[str, object], path: str, c: Checker) -> dict[str, object]:
    if isinstance(d.get("fault"), int) and not isinstance(d.get("fault"), bool):
        d = {**d, "fault": str(d["fault"])}  # `fault: 429` is how anyone would write it
    return {
        "latency_ms": c.number(d, path, "latency_ms", 0.0, ge=0),
        "fault": c.choice(d, path, "fault", MOCK_FAULTS, "none"),
        "fault_rate": c.number(d, path, "fault_rate", 1.0, ge=0, le=1),
    }


# -- models ---------------------------------------------------------------------------------------------


def _models(value: object, providers: dict[str, ProviderConfig], c: Checker) -> dict[str, ModelConfig]:
    entries = c.named(value, "models")
    if isinstance(value, dict) and not value:
        c.error("models", "must define at least one model")
    out: dict[str, ModelConfig] = {}
    for name, entry in entries.items():
        out[name] = _model(name, entry, key_path("models", name), providers, c)
    return out


def _model(
    name: str, value: object, path: str, providers: dict[str, ProviderConfig], c: Checker
) -> ModelConfig:
    d = c.record(value, path, ("provider", "upstream", "price", "context_window", "max_output_tokens"))
    if d is None:
        return ModelConfig(name=name, provider="", upstream=name)
    provider = c.text(d, path, "provider", nonempty=True)
    if "provider" not in d:
        c.error(key_path(path, "provider"), "is required")
    elif provider and provider not in providers:
        c.error(key_path(path, "provider"), f"unknown provider {provider!r}")
    if "price" in d:
        price = _price(d["price"], key_path(path, "price"), c)
    else:
        price = Price()
        # A mock costs nothing anyway; a real deployment without a price makes its budget meaningless.
        if provider in providers and providers[provider].type != "mock":
            c.warn(path, "no price: cost will be 0")
    context_window = c.opt_integer(d, path, "context_window", ge=1)
    max_output = c.opt_integer(d, path, "max_output_tokens", ge=1)
    if context_window is not None and max_output is not None and max_output > context_window:
        c.error(key_path(path, "max_output_tokens"), f"must be <= context_window ({context_window})")
    return ModelConfig(
        name=name,
        provider=provider,
        upstream=c.text(d, path, "upstream", name, nonempty=True),
        price=price,
        context_window=context_window,
        max_output_tokens=max_output,
    )


def _price(value: object, path: str, c: Checker) -> Price:
    fields = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok")
    d = c.record(value, path, fields, required=fields[:2])
    if d is None:
        return Price()
    return Price(
        input_per_mtok=c.number(d, path, "input_per_mtok", 0.0, ge=0),
        output_per_mtok=c.number(d, path, "output_per_mtok", 0.0, ge=0),
        cached_input_per_mtok=c.opt_number(d, path, "cached_input_per_mtok", ge=0),
        cache_write_per_mtok=c.opt_number(d, path, "cache_write_per_mtok", ge=0),
    )


# -- defaults and policies ------------------------------------------------------------------------------


def _defaults(value: object, c: Checker) -> Defaults:
    base = Defaults()
    if value is None:
        return base
    fields = (
        "timeout_s",
        "retry",
        "breaker",
        "max_body_bytes",
        "store_failure",
        "open_spend_usd",
        "estimate_margin",
        "max_concurrent_upstream",
        "queue_timeout_s",
        "upstream_limits",
        "response_retention_s",
    )
    d = c.record(value, "defaults", fields)
    if d is None:
        return base
    return Defaults(
        timeout_s=c.number(d, "defaults", "timeout_s", base.timeout_s, gt=0),
        retry=_retry(d.get("retry"), "defaults.retry", base.retry, c),
        breaker=_breaker(d.get("breaker"), "defaults.breaker", c),
        max_body_bytes=c.integer(d, "defaults", "max_body_bytes", base.max_body_bytes, ge=1024),
        store_failure=c.choice(d, "defaults", "store_failure", _STORE_FAILURE, base.store_failure),
        open_spend_usd=c.number(d, "defaults", "open_spend_usd", base.open_spend_usd, ge=0),
        estimate_margin=c.number(d, "defaults", "estimate_margin", base.estimate_margin, ge=0, le=1),
        max_concurrent_upstream=c.opt_integer(d, "defaults", "max_concurrent_upstream", ge=1),
        queue_timeout_s=c.number(d, "defaults", "queue_timeout_s", base.queue_timeout_s, ge=0),
        upstream_limits=_limits(
            d.get("upstream_limits"), "defaults.upstream_limits", base.upstream_limits, c
        ),
        response_retention_s=c.integer(
            d, "defaults", "response_retention_s", base.response_retention_s, ge=60
        ),
    )


def _retry(value: object, path: str, base: RetryPolicy, c: Checker) -> RetryPolicy:
    """A retry policy; fields left out are taken from ``base`` (the built-in or ``defaults.retry``)."""
    if value is None:
        return base
    d = c.record(value, path, ("attempts", "backoff_initial_s", "backoff_max_s"))
    if d is None:
        return base
    attempts = c.integer(d, path, "attempts", base.attempts, ge=1)
    initial = c.number(d, path, "backoff_initial_s", base.backoff_initial_s, ge=0)
    maximum = c.number(d, path, "backoff_max_s", base.backoff_max_s, ge=0)
    if maximum < initial:
        if "backoff_max_s" in d:
            c.error(key_path(path, "backoff_max_s"), f"must be >= backoff_initial_s ({initial:g})")
        else:
            c.error(key_path(path, "backoff_initial_s"), f"must be <= backoff_max_s ({maximum:g})")
    return RetryPolicy(
        attempts=attempts,
        backoff_initial_s=initial,
        backoff_max_s=maximum,
    )


def _breaker(value: object, path: str, c: Checker) -> BreakerPolicy:
    base = BreakerPolicy()
    if value is None:
        return base
    d = c.record(value, path, ("failures", "reset_s"))
    if d is None:
        return base
    return BreakerPolicy(
        failures=c.integer(d, path, "failures", base.failures, ge=1),
        reset_s=c.number(d, path, "reset_s", base.reset_s, gt=0),
    )


# -- plugins --------------------------------------------------------------------------------------------


_PLUGIN_FIELDS = ("url", "hooks", "timeout_s", "on_error", "api", "token")


def _plugins(value: object, c: Checker) -> dict[str, PluginConfig]:
    out: dict[str, PluginConfig] = {}
    for name, entry in c.named(value, "plugins").items():
        path = key_path("plugins", name)
        # Plugin names become URL segments (/v1/plugins/{name}/...).
        c.name(name, "plugins", "plugin name")
        d = c.record(entry, path, _PLUGIN_FIELDS, required=("url",))
        if d is None:
            out[name] = PluginConfig(name=name, url="")
            continue
        out[name] = PluginConfig(
            name=name,
            url=c.url(d, path, "url"),
            hooks=_hooks(d.get("hooks"), key_path(path, "hooks"), c),
            timeout_s=c.number(d, path, "timeout_s", 1.0, gt=0),
            on_error=c.choice(d, path, "on_error", _ON_ERROR, "open"),
            api=_flag(d, path, "api", c),
            token=c.text(d, path, "token", nonempty=True) if "token" in d else None,
        )
    return out


def _hooks(value: object, path: str, c: Checker) -> tuple[HookName, ...]:
    names = c.names(value, path)
    for i, hook in enumerate(names):
        if hook not in _HOOKS:
            c.error(index_path(path, i), "must be one of " + ", ".join(_HOOKS))
        elif hook in names[:i]:
            c.error(index_path(path, i), f"duplicate hook {hook!r}")
    return tuple(h for h in _HOOKS if h in names)


def _flag(d: dict[str, object], path: str, key: str, c: Checker) -> bool:
    value = d.get(key, False)
    if isinstance(value, bool):
        return value
    c.error(key_path(path, key), "must be true or false")
    return False


# -- routes ---------------------------------------------------------------------------------------------

_ROUTE_FIELDS = (
    "name",
    "match",
    "targets",
    "fallbacks",
    "cache",
    "plugins",
    "post_stream",
    "timeout_s",
    "retry",
    "log_content",
    "memory",
)
_POST_STREAM: tuple[PostStream, ...] = ("buffer", "audit")


def _routes(
    value: object,
    models: dict[str, ModelConfig],
    plugins: dict[str, PluginConfig],
    retry: RetryPolicy,
    c: Checker,
) -> tuple[Route, ...]:
    out: list[Route] = []
    seen: set[str] = set()
    catch_all: str | None = None
    for path, entry in c.items(value, "routes"):
        route = _route(entry, path, models, plugins, retry, seen, c)
        if route is None:
            continue
        if catch_all is not None:
            c.warn(path, f"unreachable: route {catch_all!r} before it matches every request")
        elif route.match == Match():
            catch_all = route.name
        out.append(route)
    return tuple(out)


def _route(
    value: object,
    path: str,
    models: dict[str, ModelConfig],
    plugins: dict[str, PluginConfig],
    retry: RetryPolicy,
    seen: set[str],
    c: Checker,
) -> Route | None:
    # Fields are checked in the order they are usually written, so errors read top to bottom.
    d = c.record(value, path, _ROUTE_FIELDS, required=("name", "targets"))
    if d is None:
        return None
    name = c.text(d, path, "name", nonempty=True)
    if name and name in seen:
        c.error(key_path(path, "name"), f"duplicate route name {name!r}")
    seen.add(name)
    match = _match(d.get("match"), key_path(path, "match"), c)
    targets = _targets(d.get("targets"), key_path(path, "targets"), models, c)
    fallbacks = c.names(d.get("fallbacks"), key_path(path, "fallbacks"), known=models, what="model")
    cache = _cache(d.get("cache"), key_path(path, "cache"), c)
    post_stream = c.choice(d, path, "post_stream", _POST_STREAM, "buffer")
    route_plugins = _route_plugins(d.get("plugins"), key_path(path, "plugins"), plugins, post_stream, c)
    return Route(
        name=name,
        match=match,
        targets=targets,
        fallbacks=fallbacks,
        cache=cache,
        plugins=route_plugins,
        timeout_s=c.opt_number(d, path, "timeout_s", gt=0),
        retry=_retry(d["retry"], key_path(path, "retry"), retry, c) if "retry" in d else None,
        log_content=_log_content(d.get("log_content"), key_path(path, "log_content"), c),
        memory=_memory(d.get("memory"), key_path(path, "memory"), models, c),
    )


def _route_plugins(
    value: object, path: str, plugins: dict[str, PluginConfig], post_stream: PostStream, c: Checker
) -> tuple[RoutePlugin, ...]:
    """``[guard, {rag: {top_k: 5}}]``: names or one-key mappings of a name to its options."""
    out: list[RoutePlugin] = []
    for entry_path, entry in c.items(value, path):
        options: dict[str, object] = {}
        if isinstance(entry, dict):
            if len(entry) != 1:
                c.error(entry_path, "must be a plugin name or {name: {options}} with one name")
                continue
            name, raw = next(iter(entry.items()))
            if raw is not None and not isinstance(raw, dict):
                c.error(key_path(entry_path, name), "options must be a mapping")
                continue
            options = dict(raw or {})
        elif isinstance(entry, str):
            name = entry
        else:
            c.error(entry_path, "must be a plugin name or {name: {options}}")
            continue
        plugin = plugins.get(name) if isinstance(name, str) else None
        if plugin is None:
            c.error(entry_path, f"unknown plugin {name!r}")
            continue
        if any(r.name == name for r in out):
            c.error(entry_path, f"duplicate plugin {name!r}")
            continue
        if not plugin.hooks:
            c.error(
                entry_path,
                f"plugin {name!r} declares no hooks (plugins.{name}.hooks), so a route cannot use it",
            )
            continue
        own = options.pop("post_stream", None)
        mode = post_stream
        if own is not None:
            if own not in _POST_STREAM:
                c.error(key_path(key_path(entry_path, name), "post_stream"), "must be one of buffer, audit")
                continue
            if "post" not in plugin.hooks:
                c.error(
                    key_path(key_path(entry_path, name), "post_stream"), f"plugin {name!r} has no post hook"
                )
                continue
            mode = "audit" if own == "audit" else "buffer"
        out.append(RoutePlugin(name, options, mode))
    return tuple(out)


def _targets(value: object, path: str, models: dict[str, ModelConfig], c: Checker) -> tuple[Target, ...]:
    if isinstance(value, list) and not value:
        c.error(path, "must list at least one target")
    out: list[Target] = []
    for target_path, entry in c.items(value, path):
        d = c.record(entry, target_path, ("model", "weight"), required=("model",))
        if d is None:
            continue
        model = c.text(d, target_path, "model", nonempty=True)
        if model and model not in models:
            c.error(key_path(target_path, "model"), f"unknown model {model!r}")
        out.append(Target(model=model, weight=c.number(d, target_path, "weight", 1.0, gt=0)))
    return tuple(out)


def _match(value: object, path: str, c: Checker) -> Match:
    """A route's conditions, all of which must hold; an empty match catches every request."""
    if value is None:
        return Match()
    d = c.record(value, path, ("task", "model", "tenant"))
    if d is None:
        return Match()

    def condition(key: str) -> str | None:
        return c.text(d, path, key, nonempty=True) or None

    return Match(task=condition("task"), model=condition("model"), tenant=condition("tenant"))


def _cache(value: object, path: str, c: Checker) -> CachePolicy | None:
    if value is None:
        return None
    d = c.record(value, path, ("ttl_s", "mode"), required=("ttl_s",))
    if d is None:
        return None
    return CachePolicy(
        ttl_s=c.integer(d, path, "ttl_s", 1, ge=1),
        mode=c.choice(d, path, "mode", _CACHE_MODES, "deterministic"),
    )


def _memory(value: object, path: str, models: dict[str, ModelConfig], c: Checker) -> MemoryPolicy | None:
    """``memory: {max_input_tokens: 8000, summarizer: <model>}``; the summarizer must be a known model."""
    if value is None:
        return None
    d = c.record(value, path, ("max_input_tokens", "summarizer"), required=("max_input_tokens", "summarizer"))
    if d is None:
        return None
    summarizer = c.text(d, path, "summarizer", nonempty=True)
    if summarizer and summarizer not in models:
        c.error(key_path(path, "summarizer"), f"unknown model {summarizer!r}")
    return MemoryPolicy(
        max_input_tokens=c.integer(d, path, "max_input_tokens", 1, ge=256), summarizer=summarizer
    )


def _log_content(value: object, path: str, c: Checker) -> ContentLogPolicy | None:
    """``log_content: true``, ``false`` or ``{enabled: true, max_chars: 2000}`` (enabled defaults to true)."""
    if value is None or value is False:
        return None
    if value is True:
        return ContentLogPolicy()
    if not isinstance(value, dict):
        c.error(path, "must be true, false or a mapping")
        return None
    d = c.record(value, path, ("enabled", "max_chars"))
    if d is None:
        return None
    enabled = d.get("enabled", True)
    if not isinstance(enabled, bool):
        # A string "false" would otherwise read as on: logging content by mistake is the costly error.
        c.error(key_path(path, "enabled"), "must be true or false")
        return None
    max_chars = c.integer(d, path, "max_chars", DEFAULT_LOG_CHARS, ge=1)
    return ContentLogPolicy(max_chars=max_chars) if enabled else None
