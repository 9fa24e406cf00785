"""The ``gemini`` provider: OpenAI chat and embeddings served by Google's Gemini API.

``POST {base_url}/models/{model}:generateContent`` (``:streamGenerateContent?alt=sse`` for streams,
``:batchEmbedContents`` for embeddings) with the key in ``x-goog-api-key``; ``base_url`` defaults to
``https://generativelanguage.googleapis.com/v1beta``. Translation lives in ``gemini_translate`` and
``gemini_response`` (pure); this module only does HTTP, through ``gateway.providers.http`` (the
gateway's transport: proxies, TLS settings and upstream limits apply). ``vertex`` reuses it all and
changes only the URLs and the credentials.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from gateway.config.model import ProviderConfig
from gateway.errors import BadRequest, UpstreamStatusError, UpstreamUnavailable
from gateway.providers import http
from gateway.providers.base import Operation, UpstreamRequest, UpstreamResponse, Usage
from gateway.providers.gemini_response import (
    StreamTranslator,
    batch_embed_vectors,
    embeddings_response,
    error_from_response,
    to_openai_response,
)
from gateway.providers.gemini_translate import embedding_inputs, to_batch_embed_request, to_gemini_request
from gateway.providers.registry import GEMINI_BASE_URL
from gateway.sse import Event, LimitExceeded, SSEParser
from gateway.tokens import TokenizerUnavailable, count_text

DEFAULT_BASE_URL = GEMINI_BASE_URL


class GeminiProvider:
    """One ``type: gemini`` provider entry: chat (streamed or not) and embeddings."""

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport) -> None:
        self.name = config.name
        self._config = config
        self._transport = transport
        self._limits = config.limits
        self._base = (config.base_url or self.default_base_url()).rstrip("/")
        self._headers: dict[str, str] = {"content-type": "application/json"}
        self._headers.update((k.lower(), v) for k, v in config.headers.items())
        if config.api_key:
            self._headers["x-goog-api-key"] = config.api_key
        if not http.has_user_agent(self._headers):
            self._headers["user-agent"] = http.USER_AGENT

    def default_base_url(self) -> str:
        return DEFAULT_BASE_URL

    # -- what vertex changes -------------------------------------------------------------------------

    async def headers(self) -> Mapping[str, str]:
        """The headers of every call (the API key is in them from the start)."""
        return self._headers

    async def model_url(self, model: str, method: str) -> str:
        """``models/{model}:{method}``; a name with a ``/`` (``tunedModels/x``) is used as is."""
        return f"{self._base}/{model if '/' in model else 'models/' + model}:{method}"

    async def embed(self, request: UpstreamRequest) -> UpstreamResponse:
        model = request.body["model"]
        path = model if "/" in model else "models/" + model
        body = to_batch_embed_request(request.body, path)
        data = await self._post(request, "batchEmbedContents", orjson.dumps(body))
        inputs = embedding_inputs(request.body)
        vectors = batch_embed_vectors(data, len(inputs))
        # batchEmbedContents reports no token counts: the gateway's estimate is the bill, and the
        # client sees the same number.
        try:
            tokens: int | None = count_text(inputs, model)
        except TokenizerUnavailable:
            tokens = None  # the core counts again (and logs why it cannot)
        answer = embeddings_response(vectors, model, tokens or 0)
        usage = Usage(prompt_tokens=tokens, estimated=True) if tokens is not None else None
        return UpstreamResponse(body=orjson.dumps(answer), usage=usage)

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """A non-2xx answer as the gateway's error (``gemini_response.error_from_response``)."""
        return error_from_response(status, body, headers)

    # -- the Provider protocol -----------------------------------------------------------------------

    def prepare(self, request: UpstreamRequest) -> None:
        """Translate and encode a chat request ahead of the call (dispatch does it during admission)."""
        if request.operation is Operation.CHAT:
            request.content = orjson.dumps(to_gemini_request(request.body))

    def _chat_payload(self, request: UpstreamRequest) -> bytes:
        if request.content is not None:
            return request.content
        return orjson.dumps(to_gemini_request(request.body))

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if request.operation is Operation.EMBEDDINGS:
            return await self.embed(request)
        self._check_chat(request)
        data = await self._post(request, "generateContent", self._chat_payload(request))
        completion, usage = to_openai_response(data, model=request.body["model"])
        return UpstreamResponse(body=orjson.dumps(completion), usage=usage)

    async def open_stream(self, request: UpstreamRequest) -> GeminiStream:
        """Open ``streamGenerateContent?alt=sse``; return once Gemini answered 2xx headers."""
        self._check_chat(request)
        response = await http.open_stream(
            self._transport,
            self.name,
            await self.model_url(request.body["model"], "streamGenerateContent") + "?alt=sse",
            body=self._chat_payload(request),
            headers=await self.headers(),
            timeout_s=request.timeout_s,
            on_error=self.error_from_response,
            limits=self._limits,
        )
        translator = StreamTranslator(model=request.body["model"], created=int(time.time()))
        parser = SSEParser(self._limits.max_event_bytes, self._limits.max_stream_bytes)
        return GeminiStream(self.name, response, translator, parser)

    def _check_chat(self, request: UpstreamRequest) -> None:
        if request.operation is not Operation.CHAT:
            model = request.body.get("model")
            raise BadRequest(f"model {model!r} does not support /v1/{request.operation.value}", param="model")

    async def _post(self, request: UpstreamRequest, method: str, body: bytes) -> dict[str, Any]:
        _, data = await http.post_json(
            self._transport,
            self.name,
            await self.model_url(request.body["model"], method),
            body=body,
            headers=await self.headers(),
            timeout_s=request.timeout_s,
            on_error=self.error_from_response,
            limits=self._limits,
        )
        if not isinstance(data, dict):
            raise UpstreamUnavailable(f"upstream '{self.name}' sent a malformed body")
        return data


class GeminiStream:
    """An open Gemini stream yielding OpenAI SSE frames; the response is closed however it ends."""

    def __init__(
        self, provider: str, response: http.OpenResponse, translator: StreamTranslator, parser: SSEParser
    ) -> None:
        self._provider = provider
        self._response = response
        self._translator = translator
        self._parser = parser
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None
        self._frames: AsyncGenerator[bytes, None] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._frames is None:
            self._frames = self._iterate()
        return self._frames

    async def aclose(self) -> None:
        """Stop iteration (if started) and release the connection; safe to call more than once."""
        if self._frames is not None:
            await self._frames.aclose()
        await self._response.aclose()

    def _feed(self, event: Event) -> list[bytes]:
        frames = self._translator.feed(event)
        # Published before the frames go out, so whoever reads the last chunk also sees the usage.
        self.usage, self.usage_frame = self._translator.usage, self._translator.usage_frame
        return frames

    async def _iterate(self) -> AsyncGenerator[bytes, None]:
        parser = self._parser
        try:
            async for chunk in self._response.aiter_bytes():
                for event in parser.feed(chunk):
                    for frame in self._feed(event):
                        yield frame
                if self._translator.done:
                    # The event with the finish reason (and the final usage) is Gemini's last: don't
                    # wait for the server, or a proxy in front of it, to close the body.
                    return
            for event in parser.flush():
                try:
                    frames = self._feed(event)
                except UpstreamUnavailable as exc:  # an event cut mid-write
                    raise UpstreamUnavailable(f"upstream '{self._provider}' stream ended early") from exc
                for frame in frames:
                    yield frame
            # Gemini closes the stream after the event with the finish reason: closing before it is a cut.
            if not self._translator.done:
                raise UpstreamUnavailable(f"upstream '{self._provider}' stream ended early")
        except httpx.HTTPError as exc:
            raise http.map_transport_error(exc, self._provider) from exc
        except LimitExceeded as exc:
            raise http.map_limit_error(exc, self._provider) from exc
        finally:
            await self._response.aclose()
