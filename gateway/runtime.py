"""The objects one version of the config files yields, swapped whole on reload.

A request takes the runtime current when it starts and keeps it to the end, so a reload never
changes the rules under an in-flight request or stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from gateway.config.model import BudgetsConfig, RoutesConfig
from gateway.pipeline.auth import KeyIndex
from gateway.pipeline.route import Router
from gateway.providers import build_provider
from gateway.providers.base import Provider


@dataclass(frozen=True, slots=True)
class Runtime:
    routes: RoutesConfig
    budgets: BudgetsConfig
    router: Router
    keys: KeyIndex
    providers: Mapping[str, Provider]


def build_runtime(routes: RoutesConfig, budgets: BudgetsConfig, client: httpx.AsyncClient) -> Runtime:
    return Runtime(
        routes=routes,
        budgets=budgets,
        router=Router(routes),
        keys=KeyIndex(budgets),
        providers={name: build_provider(cfg, client) for name, cfg in routes.providers.items()},
    )
