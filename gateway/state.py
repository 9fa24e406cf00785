"""What the app holds for its lifetime, set in lifespan and reached through ``app.state.gateway``."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.hosted.backend import HostedTools
from gateway.hosted.idempotency import build_records
from gateway.hosted.mcp import McpBackend
from gateway.keys import RuntimeKeys
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.pipeline.cache import ResponseCache
from gateway.pipeline.spend import Settler
from gateway.plugins.hooks import HookClient
from gateway.plugins.stage import HookStage
from gateway.proxy import Pipeline
from gateway.responses_api.turn import Turns
from gateway.runtime import Runtime, Shared
from gateway.settings import Settings
from gateway.store import GatewayStore
from gateway.tools.hub import ToolHub
from gateway.transport import FastTransport


@dataclass(eq=False)
class GatewayState:
    settings: Settings
    runtime: Runtime
    """The current config version; replaced whole on reload."""
    shared: Shared
    metrics: Metrics
    runtime_keys: RuntimeKeys
    settler: Settler
    ledger: Ledger | None = None
    """The spend ledger (gateway/ledger), None when off."""
    tools: ToolHub = field(default_factory=ToolHub)
    """The MCP clients, shared by ``/mcp`` and the hosted tool loop of ``/v1/responses``."""
    pipeline: Pipeline = field(init=False)
    plugin_transport: FastTransport = field(init=False)
    """Hook calls to sidecars: a keep-alive pool of its own (not the upstreams')."""

    def __post_init__(self) -> None:
        cache = ResponseCache(self.shared.cache_store or self.shared.store, self.metrics)
        self.plugin_transport = FastTransport(max_connections=512, max_idle=64, keepalive_expiry=30)
        hooks = HookStage(HookClient(self.plugin_transport, self.metrics), self.shared.delegation_secret)
        turns = Turns(self.shared.responses, self.shared.delegation_secret)
        tools = HostedTools(McpBackend(self.tools), build_records(self.shared.store))
        self.pipeline = Pipeline(
            self,
            self.metrics,
            self.settler,
            self.shared.gate,
            cache,
            hooks,
            turns,
            ledger=self.ledger,
            tools=tools,
        )

    @property
    def store(self) -> GatewayStore:
        return self.shared.store

    def publish(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # The gate outlives config versions; a new cap applies from now on, holders keep their slots.
        self.shared.gate.resize(runtime.routes.defaults.max_concurrent_upstream)
