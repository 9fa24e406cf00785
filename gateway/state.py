"""What the app holds for its lifetime, set in lifespan and reached through ``app.state.gateway``."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from gateway.metrics import Metrics
from gateway.proxy import Pipeline
from gateway.runtime import Runtime
from gateway.settings import Settings


@dataclass(eq=False)
class GatewayState:
    settings: Settings
    runtime: Runtime
    """The current config version; replaced whole on reload."""
    client: httpx.AsyncClient
    metrics: Metrics
    pipeline: Pipeline = field(init=False)

    def __post_init__(self) -> None:
        self.pipeline = Pipeline(self, self.metrics)

    def publish(self, runtime: Runtime) -> None:
        self.runtime = runtime
