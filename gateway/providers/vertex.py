"""The ``vertex`` provider: Gemini models on Vertex AI, with Google Cloud credentials.

The bodies and answers are the Gemini API's (``gemini``); what differs is where they go and how
they are authorised. Chat goes to
``{base_url}/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent``
(``:streamGenerateContent?alt=sse``), with ``base_url`` ``https://{location}-aiplatform.googleapis.com/v1``
(``https://aiplatform.googleapis.com/v1`` for the ``global`` location); an ``upstream`` that starts
with ``projects/`` (a tuned model's endpoint) is used as the whole path. Embeddings use the
text-embedding models' ``:predict``, which reports token counts. Calls carry an OAuth2 bearer
token from ``vertex_auth`` (``credentials_file`` or Application Default Credentials).

Options: ``project`` (else the credentials' own project), ``location`` (default ``us-central1``),
``credentials_file``. With ``api_key`` instead, the provider uses Vertex AI express mode: the key in
``x-goog-api-key``, no project or location in the path, ``https://aiplatform.googleapis.com/v1``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from gateway.config.model import ProviderConfig
from gateway.errors import UpstreamStatusError, UpstreamUnavailable
from gateway.providers.base import UpstreamRequest, UpstreamResponse, Usage
from gateway.providers.gemini import GeminiProvider
from gateway.providers.gemini_response import embeddings_response, predict_vectors
from gateway.providers.gemini_translate import embedding_inputs, to_predict_request
from gateway.providers.registry import VERTEX_LOCATION, vertex_base_url
from gateway.providers.vertex_auth import TokenSource

DEFAULT_LOCATION = VERTEX_LOCATION
ONE_INPUT_MODELS = ("gemini-embedding-",)
"""Embedding models whose ``predict`` takes a single instance (Vertex AI answers 400 to more)."""


class VertexProvider(GeminiProvider):
    """One ``type: vertex`` provider entry."""

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport) -> None:
        options = config.options
        self._location = str(options.get("location") or DEFAULT_LOCATION)
        self._project = str(options.get("project") or "")
        self._express = bool(config.api_key)
        super().__init__(config, transport)
        self.tokens = TokenSource(config.name, transport, str(options.get("credentials_file") or ""))
        self._static = dict(self._headers)
        self._merged: tuple[Mapping[str, str], dict[str, str]] | None = None

    def default_base_url(self) -> str:
        return vertex_base_url(self._location, self._express)

    async def headers(self) -> Mapping[str, str]:
        if self._express:
            return self._headers
        auth = await self.tokens.authorization()
        merged = self._merged
        if merged is None or merged[0] is not auth:
            # A new dict only when the token changes: the transport encodes a provider's headers once
            # per dict object, so a reused token costs no re-encoding.
            merged = self._merged = (auth, {**self._static, **auth})
        return merged[1]

    async def model_url(self, model: str, method: str) -> str:
        if model.startswith("projects/"):
            return f"{self._base}/{model}:{method}"
        if self._express:
            return f"{self._base}/publishers/google/models/{model}:{method}"
        if not self._project and not self.tokens.project:
            await self.tokens.authorization()  # the credentials name the project: load them first
        project = self._project or self.tokens.project
        if not project:
            raise UpstreamUnavailable(
                f"upstream '{self.name}' has no Google Cloud project: set the provider's 'project' option",
                code="upstream_config_error",
            )
        return (
            f"{self._base}/projects/{project}/locations/{self._location}/publishers/google/models/"
            f"{model}:{method}"
        )

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """As Gemini's; a 401 also drops the cached token (revoked, or the clock was off), so the next
        attempt fetches a new one instead of failing with it until it would have expired."""
        if status == 401 and not self._express:
            self.tokens.invalidate()
        return super().error_from_response(status, body, headers)

    async def embed(self, request: UpstreamRequest) -> UpstreamResponse:
        model = request.body["model"]
        inputs = embedding_inputs(request.body)
        if model.startswith(ONE_INPUT_MODELS) and len(inputs) > 1:
            # These models take one instance per predict call: one call per input, sent together.
            singles = [{**request.body, "input": text} for text in inputs]
            answers = await asyncio.gather(*(self._predict(request, one, 1) for one in singles))
            vectors = [v for found, _ in answers for v in found]
            counts = [count for _, count in answers]
            tokens = None if None in counts else sum(c for c in counts if c is not None)
        else:
            vectors, tokens = await self._predict(request, request.body, len(inputs))
        answer = embeddings_response(vectors, model, tokens or 0)
        usage = Usage(prompt_tokens=tokens) if tokens is not None else None
        return UpstreamResponse(body=orjson.dumps(answer), usage=usage)

    async def _predict(
        self, request: UpstreamRequest, body: Mapping[str, Any], expected: int
    ) -> tuple[list[Any], int | None]:
        data = await self._post(request, "predict", orjson.dumps(to_predict_request(body)))
        return predict_vectors(data, expected)
