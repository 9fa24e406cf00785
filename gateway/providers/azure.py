"""Azure OpenAI: deployment URLs, ``api-key`` header, ``api-version`` query parameter.

Each model's ``upstream`` in routes.yaml is the Azure deployment name.
"""

from __future__ import annotations

import httpx

from gateway.config.model import ProviderConfig
from gateway.providers.base import UpstreamRequest
from gateway.providers.openai import PATHS, OpenAIProvider


class AzureProvider(OpenAIProvider):
    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport) -> None:
        super().__init__(config, transport)
        self._api_version = config.api_version or "2024-10-21"

    def _auth_headers(self, config: ProviderConfig) -> dict[str, str]:
        return {"api-key": config.api_key} if config.api_key else {}

    def url(self, request: UpstreamRequest) -> str:
        deployment = str(request.body.get("model", ""))
        path = PATHS[request.operation]
        return f"{self._base}/openai/deployments/{deployment}{path}?api-version={self._api_version}"
