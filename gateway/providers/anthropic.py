"""The ``anthropic`` provider: OpenAI chat completions served by Anthropic's Messages API.

All translation lives in ``anthropic_translate`` (pure); this module only does HTTP, through the shared
helpers in ``gateway.providers.http`` where httpx exceptions become ``gateway.errors``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from gateway.config.model import ProviderConfig
from gateway.errors import BadRequest, UpstreamUnavailable
from gateway.providers import anthropic_native as native
from gateway.providers import http
from gateway.providers.anthropic_response import StreamTranslator, error_from_response, to_openai_response
from gateway.providers.anthropic_translate import to_anthropic_request
from gateway.providers.base import Operation, UpstreamRequest, UpstreamResponse, Usage
from gateway.sse import Event, LimitExceeded, SSEParser

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096


class AnthropicProvider:
    """One ``type: anthropic`` provider entry. Only chat is supported: OpenAI chat translated to
    Messages and back, or, for ``/v1/messages`` clients, Messages as sent (``anthropic_native``).

    ``options.default_max_tokens`` sets the ``max_tokens`` sent when the client gave none (Anthropic
    requires one; default 4096).
    """

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport) -> None:
        self.name = config.name
        self._config = config
        self._transport = transport
        base = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        # The documented base_url is the root, but "…/v1" is a common slip copied from OpenAI configs.
        self._url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        default_max = config.options.get("default_max_tokens", DEFAULT_MAX_TOKENS)
        self._default_max_tokens = default_max if isinstance(default_max, int) else DEFAULT_MAX_TOKENS

    def prepare(self, request: UpstreamRequest) -> None:
        """Translate and encode the request ahead of the call (dispatch does it during admission)."""
        if request.native is not None:
            return  # sent as the client sent it: nothing to translate
        request.content = orjson.dumps(self._body(request, stream=request.stream))

    def _payload(self, request: UpstreamRequest, *, stream: bool) -> bytes:
        if request.native is not None:  # the client's Messages body, as sent (anthropic_native)
            return native.payload(request, request.native)
        if request.content is not None and request.stream is stream:
            return request.content
        return orjson.dumps(self._body(request, stream=stream))

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """POST a non-streaming Messages request and return the OpenAI ``chat.completion`` body (and,
        for a native request, Anthropic's own)."""
        content, message = await http.post_json(
            self._transport,
            self.name,
            self._url,
            body=self._payload(request, stream=False),
            headers=self._headers(request.headers),
            timeout_s=request.timeout_s,
            on_error=error_from_response,
            limits=self._config.limits,
        )
        if request.native is not None:
            return native.answer(content, message, request.body["model"])
        if not isinstance(message, dict):
            raise UpstreamUnavailable("malformed upstream body")
        completion, usage = to_openai_response(message, model=request.body["model"])
        return UpstreamResponse(body=orjson.dumps(completion), usage=usage, status=200)

    async def open_stream(self, request: UpstreamRequest) -> AnthropicStream | native.NativeStream:
        """Open a streaming Messages request; return once Anthropic answered 2xx headers."""
        response = await http.open_stream(
            self._transport,
            self.name,
            self._url,
            body=self._payload(request, stream=True),
            headers=self._headers(request.headers),
            timeout_s=request.timeout_s,
            on_error=error_from_response,
            limits=self._config.limits,
        )
        limits = self._config.limits
        parser = SSEParser(limits.max_event_bytes, limits.max_stream_bytes)
        if request.native is not None:
            return native.NativeStream(self.name, response, parser, request.body["model"])
        translator = StreamTranslator(model=request.body["model"], created=int(time.time()))
        return AnthropicStream(self.name, response, translator, parser)

    async def count_tokens(self, body: bytes, client_headers: Mapping[str, str], timeout_s: float) -> bytes:
        """``POST /v1/messages/count_tokens`` upstream: the answer's bytes (Anthropic does not bill it)."""
        content, _ = await http.post_json(
            self._transport,
            self.name,
            self._url + "/count_tokens",
            body=body,
            headers=self._headers(client_headers),
            timeout_s=timeout_s,
            on_error=error_from_response,
            limits=self._config.limits,
        )
        return content

    def _body(self, request: UpstreamRequest, *, stream: bool) -> dict[str, Any]:
        if request.operation is not Operation.CHAT:
            model = request.body.get("model")
            raise BadRequest(f"model {model!r} does not support /v1/{request.operation.value}", param="model")
        body = to_anthropic_request(request.body, default_max_tokens=self._default_max_tokens)
        # The method chosen decides the wire mode, whatever the body said.
        body.pop("stream", None)
        if stream:
            body["stream"] = True
        return body

    def _headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        forwarded = {k.lower(): v for k, v in client_headers.items()}
        headers = {"content-type": "application/json", "anthropic-version": DEFAULT_VERSION}
        headers.update((k.lower(), v) for k, v in self._config.headers.items())
        # The client knows which API version its request shape follows, so its choice wins over ours.
        if "anthropic-version" in forwarded:
            headers["anthropic-version"] = forwarded["anthropic-version"]
        betas = [b for b in (headers.get("anthropic-beta"), forwarded.get("anthropic-beta")) if b]
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        if self._config.api_key:
            headers["x-api-key"] = self._config.api_key
        return headers


class AnthropicStream:
    """An open Anthropic stream yielding OpenAI SSE frames; the response is closed however it ends."""

    def __init__(
        self,
        provider: str,
        response: http.OpenResponse,
        translator: StreamTranslator,
        parser: SSEParser | None = None,
    ) -> None:
        self._provider = provider
        self._parser = parser or SSEParser()
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None
        self._response = response
        self._translator = translator
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
        # Published before the frames go out, so whoever reads the last chunk also sees final usage.
        self.usage, self.usage_frame = self._translator.usage, self._translator.usage_frame
        return frames

    async def _iterate(self) -> AsyncGenerator[bytes, None]:
        parser = self._parser
        translator = self._translator
        try:
            async for chunk in self._response.aiter_bytes():
                for event in parser.feed(chunk):
                    for frame in self._feed(event):
                        yield frame
                if translator.done:
                    # Nothing follows message_stop; don't wait for the server to close the body.
                    return
            for event in parser.flush():
                # An unterminated last event is whole (served) or cut mid-write (ended early).
                try:
                    frames = self._feed(event)
                except UpstreamUnavailable as exc:
                    raise UpstreamUnavailable("upstream stream ended early") from exc
                for frame in frames:
                    yield frame
            if not translator.done:
                raise UpstreamUnavailable("upstream stream ended early")
        except httpx.HTTPError as exc:
            raise http.map_transport_error(exc, self._provider) from exc
        except LimitExceeded as exc:
            raise http.map_limit_error(exc, self._provider) from exc
        finally:
            await self._response.aclose()
