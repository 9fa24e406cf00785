"""Frozen configuration objects: what routes.yaml and budgets.yaml mean once parsed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Period = Literal["daily", "weekly", "monthly", "total"]
Role = Literal["user", "admin", "reviewer"]
DEFAULT_LOG_CHARS = 2000
ROLES: tuple[Role, ...] = ("user", "admin", "reviewer")
PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly", "total")
MAX_BUDGET_USD = 1_000_000
"""The largest budget (budgets.yaml and the admin API): money is integer nano-USD that the store's
Lua compares as doubles, exact up to 2**53 nano (~9 million USD); this leaves room above a full
budget for the reservations and overruns that are added to it."""
MAX_NAME_LENGTH = 128
"""Tenant, key, model, provider and route names: they become Redis keys, metric labels and URL paths."""


MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """How much of an upstream's answer the gateway reads (routes.yaml ``defaults.upstream_limits``,
    overridden per provider by ``providers.<name>.limits``). Sizes are bytes after decompression, so a
    compressed answer is held to the same bound as a plain one (a gzip bomb stops at the cap)."""

    max_body_bytes: int = 32 * MIB
    """A non-streamed answer; past it the answer is a 502, and the read stops there."""
    max_error_bytes: int = 1 * MIB
    """A non-2xx answer's body: past it the body is not read further and the error is summarized."""
    max_event_bytes: int = 1 * MIB
    """One SSE event (its lines up to the blank line that ends it)."""
    max_stream_bytes: int = 256 * MIB
    """A whole stream; past it the stream ends with a 502 (before the first byte) or an SSE error event."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """A provider's ``tls:``: its own CA bundle, a client certificate (mTLS), or no verification."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    """Empty with ``cert_file``: the key is in the certificate's PEM file."""
    verify: bool = True


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str = ""
    api_key: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    api_version: str = ""
    """Azure's api-version query parameter."""
    options: Mapping[str, object] = field(default_factory=dict)
    """Type-specific settings (the mock's latency_ms, fault, fault_rate)."""
    limits: UpstreamLimits = field(default_factory=UpstreamLimits)
    """``defaults.upstream_limits`` with this provider's ``limits`` laid over them."""
    tls: TlsConfig | None = None
    """None: the default TLS context (system roots, ``SSL_CERT_FILE``/``SSL_CERT_DIR``)."""


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A deployment: a routes.yaml ``models:`` entry."""

    name: str
    provider: str
    upstream: str
    price: Price = field(default_factory=Price)
    context_window: int | None = None
    max_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Target:
    model: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Match:
    task: str | None = None
    model: str | None = None
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class CachePolicy:
    ttl_s: int
    mode: Literal["deterministic", "always"] = "deterministic"


@dataclass(frozen=True, slots=True)
class MemoryPolicy:
    """A route's conversation memory (``/v1/responses`` with ``previous_response_id``): when a chain's
    input would exceed ``max_input_tokens``, the oldest turns are summarized by ``summarizer`` (a
    deployment, ``models:`` key) once, and the summary stands in for them from then on."""

    max_input_tokens: int
    summarizer: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 8.0


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5
    reset_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ContentLogPolicy:
    """A route's opt-in to put the (redacted, truncated) prompt and answer text in its access log lines."""

    max_chars: int = DEFAULT_LOG_CHARS
    """Each of ``prompt`` and ``answer`` is cut to this many characters after redaction."""


PostStream = Literal["buffer", "audit"]


@dataclass(frozen=True, slots=True)
class RoutePlugin:
    """One entry of a route's ``plugins:`` list: a plugin name, or ``{name: {options...}}``."""

    name: str
    options: Mapping[str, object] = field(default_factory=dict)
    """Opaque to the gateway: sent to the sidecar as the hook call's ``config``."""
    post_stream: PostStream = "buffer"
    """On a streaming request: hold the answer for this post hook (``buffer``) or show it the finished
    stream afterwards (``audit``). The entry's ``post_stream`` option, else the route's, else buffer."""


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: Match
    targets: tuple[Target, ...]
    fallbacks: tuple[str, ...] = ()
    cache: CachePolicy | None = None
    plugins: tuple[RoutePlugin, ...] = ()
    """Pre hooks run in this order, post hooks in reverse."""
    timeout_s: float | None = None
    retry: RetryPolicy | None = None
    log_content: ContentLogPolicy | None = None
    """None (the default): no prompt or answer text is ever logged for this route."""
    memory: MemoryPolicy | None = None


HookName = Literal["pre", "post", "tool"]


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """A sidecar plugin (DESIGN.md "Sidecar plugin protocol (v1)")."""

    name: str
    url: str
    hooks: tuple[HookName, ...] = ()
    """The hook points the sidecar serves (``POST {url}/hooks/{hook}``)."""
    timeout_s: float = 1.0
    on_error: Literal["open", "closed"] = "open"
    api: bool = False
    """``/v1/plugins/{name}/{path}`` is forwarded to ``{url}/api/{path}``."""
    token: str | None = None
    """Sent as ``Authorization: Bearer`` on every gateway→sidecar call."""


@dataclass(frozen=True, slots=True)
class Defaults:
    timeout_s: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    max_body_bytes: int = 10 * 1024 * 1024
    store_failure: Literal["closed", "open"] = "closed"
    open_spend_usd: float = 1.0
    """``store_failure: open``: what one replica may spend per tenant (and per key with a budget of its
    own) in one budget period while the store is unreachable (``gateway/pipeline/open_mode.py``)."""
    estimate_margin: float = 0.10
    max_concurrent_upstream: int | None = None
    """Per-replica cap on upstream requests in flight; None is no cap."""
    queue_timeout_s: float = 1.0
    """How long a request waits for a free upstream slot before it is shed with 503."""
    upstream_limits: UpstreamLimits = field(default_factory=UpstreamLimits)
    response_retention_s: int = 30 * 86_400
    """How long a stored ``/v1/responses`` turn is kept (``store: true``, the default)."""


@dataclass(frozen=True, slots=True)
class McpServerConfig:
    """An upstream MCP server (routes.yaml ``mcp_servers:``), reached over Streamable HTTP."""

    name: str
    """A Python identifier without ``__``: tools are exposed as ``{name}__{tool}``."""
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    """Sent on every call to the server (its credentials); never shown to callers."""
    tenants: tuple[str, ...] | None = None
    """The tenants that may use it; None: every tenant."""
    allowed_tools: tuple[str, ...] | None = None
    """Globs over the server's own tool names; None: every tool it lists."""
    timeout_s: float = 30.0
    """One call (connect, list or call, answer) to the server."""
    max_result_bytes: int = MIB
    """A tool result's text past this is cut, with a marker saying how much was dropped."""


TOOL_SEPARATOR = "__"
"""Between a server's name and its tool's in the names callers see: ``crm__lookup``."""
ToolRisk = Literal["low", "high"]
Approval = Literal["never", "always"]
Approver = Literal["client", "reviewer"]


@dataclass(frozen=True, slots=True)
class ToolRule:
    """``tool_policy.tools.<pattern>``: the rule for the tools whose ``server__tool`` name matches."""

    pattern: str
    """``crm__lookup`` or a glob such as ``crm__*``; an exact name wins over globs, then the longest glob."""
    risk: ToolRisk = "low"
    roles: tuple[Role, ...] | None = None
    """The key roles that may see and call the tools; None: every role."""
    require_approval: Approval = "never"
    """``always``: each call waits for an approval; a request cannot lower it."""
    approver: Approver = "client"
    """Who approves: the calling client (``mcp_approval_response``) or a reviewer (the review plugin)."""


@dataclass(frozen=True, slots=True)
class ToolLimits:
    """``tool_policy.defaults``: the hard limits of one hosted tool loop (``/v1/responses``)."""

    max_tool_calls: int = 20
    max_wall_s: float = 300.0
    max_cost_usd: float | None = None
    """None: no ceiling of its own (the tenant's and key's budgets still apply)."""


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    defaults: ToolLimits = field(default_factory=ToolLimits)
    tools: tuple[ToolRule, ...] = ()
    """In lookup order: exact names first, then globs from the longest (most specific)."""


@dataclass(frozen=True, slots=True)
class RoutesConfig:
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, ModelConfig]
    routes: tuple[Route, ...]
    defaults: Defaults = field(default_factory=Defaults)
    plugins: Mapping[str, PluginConfig] = field(default_factory=dict)
    mcp_servers: Mapping[str, McpServerConfig] = field(default_factory=dict)
    tool_policy: ToolPolicy = field(default_factory=ToolPolicy)


@dataclass(frozen=True, slots=True)
class Budget:
    usd: float
    period: Period


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class KeyConfig:
    id: str
    tenant: str
    sha256: str
    role: Role = "user"
    budget: Budget | None = None
    limits: Limits = field(default_factory=Limits)
    models: tuple[str, ...] | None = None
    """Globs over deployment names narrowing the tenant's allow-list (both must allow); None: the tenant's."""
    expires_at: float | None = None
    """Unix seconds from which the key is refused; None = never."""


@dataclass(frozen=True, slots=True)
class TenantConfig:
    name: str
    budget: Budget | None = None
    limits: Limits = field(default_factory=Limits)
    models: tuple[str, ...] | None = None
    """Globs over deployment names; None = every deployment."""
    keys: tuple[KeyConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class BudgetsConfig:
    tenants: Mapping[str, TenantConfig]

    def keys_by_hash(self) -> dict[str, KeyConfig]:
        return {k.sha256: k for t in self.tenants.values() for k in t.keys}
