"""Provider adapters, one module each, chosen by ``type`` in routes.yaml (``registry.PROVIDERS``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from gateway.providers.registry import PROVIDER_TYPES, PROVIDERS

if TYPE_CHECKING:
    import httpx

    from gateway.config.model import ProviderConfig
    from gateway.providers.base import Provider

__all__ = ["PROVIDER_TYPES", "build_provider"]


def build_provider(config: ProviderConfig, transport: httpx.AsyncBaseTransport) -> Provider:
    """The adapter for one providers: entry; its module is imported now, not when the config is read."""
    row = PROVIDERS[config.type]
    adapter = getattr(importlib.import_module(row.module), row.cls)
    return cast("Provider", adapter(config, transport))
