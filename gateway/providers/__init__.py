"""Provider adapters, one module each, chosen by ``type`` in routes.yaml."""

from __future__ import annotations

import importlib
from typing import cast

import httpx

from gateway.config.model import ProviderConfig
from gateway.providers.base import Provider

# type -> (module, class). Adding a provider is adding a module and a line here.
ADAPTERS: dict[str, tuple[str, str]] = {
    "openai": ("gateway.providers.openai", "OpenAIProvider"),
    "openai_responses": ("gateway.providers.openai_responses", "OpenAIResponsesProvider"),
    "azure": ("gateway.providers.azure", "AzureProvider"),
    "azure_responses": ("gateway.providers.azure", "AzureResponsesProvider"),
    "anthropic": ("gateway.providers.anthropic", "AnthropicProvider"),
    "mock": ("gateway.providers.mock", "MockProvider"),
}
PROVIDER_TYPES = tuple(ADAPTERS)


def build_provider(config: ProviderConfig, transport: httpx.AsyncBaseTransport) -> Provider:
    module, name = ADAPTERS[config.type]
    adapter = getattr(importlib.import_module(module), name)
    return cast(Provider, adapter(config, transport))
