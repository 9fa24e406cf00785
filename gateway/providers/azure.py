"""Azure OpenAI: deployment URLs, ``api-key`` header, ``api-version`` query parameter.

Each model's ``upstream`` in routes.yaml is the Azure deployment name.

``type: azure_responses`` is a deployment reached through Azure's native Responses API, which Azure
serves only on its OpenAI-compatible v1 surface: ``POST {base_url}/openai/v1/responses`` with the
deployment in the body's ``model`` and no ``api-version``. Its other operations (embeddings) keep the
deployment URLs above.
"""

from __future__ import annotations

import httpx

from gateway.config.model import ProviderConfig
from gateway.providers.base import Operation, UpstreamRequest
from gateway.providers.openai import PATHS, OpenAIProvider
from gateway.providers.openai_responses import OpenAIResponsesProvider
from gateway.providers.registry import AZURE_API_VERSION


class _Azure(OpenAIProvider):
    """What both Azure types share: the ``api-key`` header and the ``api-version`` of deployment URLs."""

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport) -> None:
        super().__init__(config, transport)
        self._api_version = str(config.options.get("api_version") or AZURE_API_VERSION)

    def _auth_headers(self, config: ProviderConfig) -> dict[str, str]:
        return {"api-key": config.api_key} if config.api_key else {}


class AzureProvider(_Azure):
    def url(self, request: UpstreamRequest) -> str:
        return _deployment_url(self._base, self._api_version, request)


class AzureResponsesProvider(_Azure, OpenAIResponsesProvider):
    def url(self, request: UpstreamRequest) -> str:
        if request.operation is Operation.CHAT:
            return self._base + "/openai/v1/responses"
        return _deployment_url(self._base, self._api_version, request)


def _deployment_url(base: str, api_version: str, request: UpstreamRequest) -> str:
    deployment = str(request.body.get("model", ""))
    path = PATHS[request.operation]
    return f"{base}/openai/deployments/{deployment}{path}?api-version={api_version}"
