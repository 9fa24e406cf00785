"""The objects one version of the config files yields, swapped whole on reload.

A request takes the runtime current when it starts and keeps it to the end, so a reload never
changes the rules under an in-flight request or stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from gateway.config.model import BudgetsConfig, RoutesConfig
from gateway.egress import Egress
from gateway.pipeline.admit import Admitter, Releases
from gateway.pipeline.auth import KeyIndex, RuntimeById, RuntimeLookup
from gateway.pipeline.breaker import BreakerRegistry
from gateway.pipeline.dispatch import Resilience
from gateway.pipeline.open_mode import LastKnown
from gateway.pipeline.overload import Gate
from gateway.pipeline.route import Router
from gateway.plugins import secret
from gateway.providers import build_provider
from gateway.providers.base import Provider
from gateway.providers.registry import PROVIDERS
from gateway.responses_api.store import ResponseStore
from gateway.store import GatewayStore
from gateway.store.base import Store


@dataclass(frozen=True, slots=True)
class Runtime:
    routes: RoutesConfig
    budgets: BudgetsConfig
    router: Router
    keys: KeyIndex
    providers: Mapping[str, Provider]
    admitter: Admitter
    resilience: Resilience


@dataclass(frozen=True, slots=True)
class Shared:
    """What outlives config versions: the upstream transport, the stores, the run-time keys, the breakers,
    the upstream concurrency gate."""

    transport: httpx.AsyncBaseTransport
    store: GatewayStore
    fallback: Store
    runtime_keys: RuntimeLookup | None = None
    breakers: BreakerRegistry | None = None
    gate: Gate = field(default_factory=Gate)
    releases: Releases | None = None
    """The settler: releases the admissions that failed (``gateway/pipeline/admit.py``)."""
    known: LastKnown = field(default_factory=LastKnown)
    """Spent totals as the store last reported them, for ``store_failure: open``'s bound."""
    cache_store: GatewayStore | None = None
    """The response cache's own store (``GATEWAY_CACHE_REDIS_URL``); None: ``store`` holds it."""
    delegation_secret: bytes | None = None
    """Signs the delegation tokens handed to sidecars (``gateway/plugins/secret.py``); None only when
    the process does not run alone and ``GATEWAY_DELEGATION_SECRET`` is unset (then no plugin may run)."""
    delegation_verifying: tuple[bytes, ...] = ()
    """Every secret a token may be signed with (``GATEWAY_DELEGATION_SECRET``'s list, for rotation); the
    signing secret always verifies too."""
    runtime_keys_by_id: RuntimeById | None = None
    egress: Egress | None = None
    """Gives a provider behind a proxy or with ``tls:`` its own transport (gateway/egress.py); None: every
    provider uses ``transport`` (a test's MockTransport)."""
    responses: ResponseStore | None = None
    """Stored ``/v1/responses`` turns (``gateway/responses_api``): beside ``store`` (Redis, or this
    process). None only for a ``Shared`` built without one (unit tests of other stages)."""

    @property
    def delegation_secrets(self) -> tuple[bytes, ...]:
        """The secrets tokens are verified with: the signing one first."""
        own = (self.delegation_secret,) if self.delegation_secret is not None else ()
        return own + tuple(s for s in self.delegation_verifying if s != self.delegation_secret)


def build_runtime(routes: RoutesConfig, budgets: BudgetsConfig, shared: Shared) -> Runtime:
    """The runtime of one config version; ``ConfigError`` when plugins are configured without a secret."""
    secret.require(routes, shared.delegation_secret)
    if shared.breakers is not None:
        # Follow every deployment's shared circuit from the start, not from its first call: a replica
        # that starts (or scales up) during an outage must not send the open deployment a request.
        for name in routes.models:
            shared.breakers.get(name, routes.defaults.breaker)
    return Runtime(
        routes=routes,
        budgets=budgets,
        router=Router(routes),
        keys=KeyIndex(
            budgets,
            shared.runtime_keys,
            runtime_by_id=shared.runtime_keys_by_id,
            delegation_secrets=shared.delegation_secrets,
        ),
        providers={
            name: build_provider(cfg, shared.egress.transport_for(cfg) if shared.egress else shared.transport)
            for name, cfg in routes.providers.items()
        },
        admitter=Admitter(
            shared.store, shared.fallback, routes.defaults, releases=shared.releases, known=shared.known
        ),
        resilience=Resilience(
            breakers=shared.breakers,
            breaker_policy=routes.defaults.breaker,
            attempt_timeouts={n: p.timeout_s for n, p in routes.providers.items() if p.timeout_s},
            native_formats={
                n: PROVIDERS[p.type].native for n, p in routes.providers.items() if PROVIDERS[p.type].native
            },
        ),
    )
