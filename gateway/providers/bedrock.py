"""The ``bedrock`` provider: OpenAI chat completions served by AWS Bedrock's Converse and ConverseStream.

Translation lives in ``bedrock_translate`` and ``bedrock_response`` (pure); credentials and SigV4 in
``bedrock_auth``; embeddings (InvokeModel) in ``bedrock_embed``. This module does HTTP, through the
shared helpers of ``gateway.providers.http`` (same transport, proxies, TLS and limits as every
provider), and reads ConverseStream's AWS event-stream framing with botocore's ``EventStreamBuffer``.

Options (routes.yaml, checked by ``registry.PROVIDERS["bedrock"]``): ``region``; ``profile``;
``aws_access_key_id`` + ``aws_secret_access_key`` (+ ``aws_session_token``) instead of the standard
chain; ``api_key`` for a Bedrock API key (sent as a bearer token, no SigV4); ``base_url`` (default ``https://bedrock-runtime.{region}.amazonaws.com``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import orjson
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError
from botocore.utils import percent_encode

from gateway.config.model import ProviderConfig, UpstreamLimits
from gateway.errors import BadRequest, UpstreamAuthError, UpstreamUnavailable
from gateway.providers import http
from gateway.providers.base import Operation, UpstreamRequest, UpstreamResponse, Usage
from gateway.providers.bedrock_auth import AwsCredentials, region_of, sign
from gateway.providers.bedrock_embed import embed
from gateway.providers.bedrock_response import (
    StreamTranslator,
    error_from_response,
    exception_error,
    to_openai_response,
)
from gateway.providers.bedrock_translate import forces_json, to_converse_request

log = logging.getLogger("gateway.providers")

_JSON = "application/json"
_EVENT_STREAM = "application/vnd.amazon.eventstream"


class BedrockProvider:
    """One ``type: bedrock`` provider entry: chat (Converse, ConverseStream) and embeddings (InvokeModel
    for Titan and Cohere embedding models). Each model's ``upstream`` is a Bedrock model id, inference
    profile id or ARN."""

    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport) -> None:
        self.name = config.name
        self._config = config
        self._transport = transport
        options = config.options
        profile = options.get("profile")
        profile = profile if isinstance(profile, str) and profile else None
        self.region = region_of(options.get("region"), profile)
        base = config.base_url or (
            f"https://bedrock-runtime.{self.region}.amazonaws.com" if self.region else ""
        )
        self._base = base.rstrip("/")
        if not self.region and (not config.base_url or not config.api_key):  # URL or SigV4 needs one
            # Said once at load, where the operator looks; each request then fails with the same words.
            log.warning("bedrock provider %r has no AWS region: set region (or AWS_REGION)", self.name)
        self._bearer = f"Bearer {config.api_key}" if config.api_key else None
        key, secret = options.get("aws_access_key_id"), options.get("aws_secret_access_key")
        static = None
        if isinstance(key, str) and key and isinstance(secret, str) and secret:
            token = options.get("aws_session_token")
            static = {"access_key": key, "secret_key": secret}
            if isinstance(token, str) and token:
                static["token"] = token
        self._credentials = AwsCredentials(self.name, profile=profile, static=static)
        self._headers = {k.lower(): v for k, v in config.headers.items()}

    def prepare(self, request: UpstreamRequest) -> None:
        """Translate and encode the body ahead of the call; signing waits for the send (it is dated)."""
        if request.operation is Operation.CHAT:
            request.content = orjson.dumps(to_converse_request(request.body))

    def url(self, model: Any, action: str) -> str:
        if not self._base:
            raise UpstreamUnavailable(
                f"upstream '{self.name}' has no AWS region: set region (or AWS_REGION) or base_url",
                code="upstream_config_error",
            )
        if not isinstance(model, str) or not model:
            raise BadRequest("model: must be a non-empty string", param="model")
        # As botocore renders the {modelId} label: "…-v1:0" becomes "…-v1%3A0", an ARN's "/" "%2F".
        return f"{self._base}/model/{percent_encode(model)}/{action}"

    async def headers(self, url: str, body: bytes, accept: str) -> http.OneOff:
        """The request's headers, signed over exactly ``body`` (or with the API key as bearer token)."""
        headers = {"content-type": _JSON, "accept": accept, **self._headers}
        if self._bearer is not None:
            return http.OneOff(headers, authorization=self._bearer)
        if not self.region:
            raise UpstreamAuthError(f"upstream '{self.name}' has no AWS region to sign for")
        credentials = await self._credentials.current()
        return http.OneOff(sign(url, headers, body, credentials, self.region))

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Converse (or InvokeModel for embeddings); the answer as OpenAI's body."""
        model = request.body.get("model")
        if request.operation is Operation.EMBEDDINGS:
            return await embed(self, request)
        if request.operation is not Operation.CHAT:
            raise BadRequest(f"model {model!r} does not support /v1/{request.operation.value}", param="model")
        url = self.url(model, "converse")
        body = self._content(request)
        _, answer = await http.post_json(
            self._transport,
            self.name,
            url,
            body=body,
            headers=await self.headers(url, body, _JSON),
            timeout_s=request.timeout_s,
            on_error=error_from_response,
            limits=self._config.limits,
        )
        if not isinstance(answer, dict):
            raise UpstreamUnavailable(f"upstream '{self.name}' sent a malformed body")
        completion, usage = to_openai_response(
            answer, model=str(model), json_forced=forces_json(request.body)
        )
        return UpstreamResponse(body=orjson.dumps(completion), usage=usage, status=200)

    async def open_stream(self, request: UpstreamRequest) -> BedrockStream:
        """ConverseStream; return once Bedrock answered 2xx headers."""
        model = request.body.get("model")
        if request.operation is not Operation.CHAT:
            raise BadRequest(f"model {model!r} does not support streaming here", param="model")
        url = self.url(model, "converse-stream")
        body = self._content(request)
        response = await http.open_stream(
            self._transport,
            self.name,
            url,
            body=body,
            headers=await self.headers(url, body, _EVENT_STREAM),
            timeout_s=request.timeout_s,
            on_error=error_from_response,
            limits=self._config.limits,
        )
        translator = StreamTranslator(
            model=str(model), created=int(time.time()), json_forced=forces_json(request.body)
        )
        return BedrockStream(self.name, response, translator, self._config.limits)

    def _content(self, request: UpstreamRequest) -> bytes:
        if request.content is not None:
            return request.content
        return orjson.dumps(to_converse_request(request.body))

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        return self._transport

    @property
    def config(self) -> ProviderConfig:
        return self._config


class BedrockStream:
    """An open ConverseStream yielding OpenAI SSE frames; the response is closed however it ends.

    Each AWS event-stream message is checked (prelude and message CRCs) by botocore's parser; one whose
    ``:message-type`` is ``exception`` or ``error`` ends the stream with the mapped error. A stream that
    ends before ``messageStop`` ended early (a 502, or an SSE error event once bytes went out).
    """

    def __init__(
        self,
        provider: str,
        response: http.OpenResponse,
        translator: StreamTranslator,
        limits: UpstreamLimits = http.NO_LIMITS,
    ) -> None:
        self._provider = provider
        self._response = response
        self._translator = translator
        self._limits = limits
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

    def _feed(self, message: EventStreamMessage) -> list[bytes]:
        headers = message.headers
        kind = headers.get(":message-type")
        if kind == "exception":
            name = str(headers.get(":exception-type") or "")
            raise exception_error(name, _message_of(message.payload))
        if kind == "error":
            code, text = headers.get(":error-code"), headers.get(":error-message")
            raise exception_error(str(code or ""), str(text) if text else None)
        try:
            payload = orjson.loads(message.payload) if message.payload else {}
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable(f"upstream '{self._provider}' sent a malformed stream event") from None
        if not isinstance(payload, dict):
            raise UpstreamUnavailable(f"upstream '{self._provider}' sent a malformed stream event")
        frames = self._translator.feed(str(headers.get(":event-type") or ""), payload)
        # Published before the frames go out, so whoever reads the last chunk also sees final usage.
        self.usage, self.usage_frame = self._translator.usage, self._translator.usage_frame
        return frames

    async def _iterate(self) -> AsyncGenerator[bytes, None]:
        buffer = EventStreamBuffer()
        translator = self._translator
        max_event, max_stream = self._limits.max_event_bytes, self._limits.max_stream_bytes
        pending = total = 0  # bytes of the message being received; bytes of the whole stream
        try:
            async for chunk in self._response.aiter_bytes():
                pending += len(chunk)
                total += len(chunk)
                if total > max_stream:
                    raise http.too_large(self._provider, max_stream, "stream")
                buffer.add_data(chunk)
                for message in buffer:
                    size = message.prelude.total_length
                    if size > max_event:
                        raise http.too_large(self._provider, max_event, "stream event")
                    pending -= size
                    for frame in self._feed(message):
                        yield frame
                    if translator.done:
                        return  # nothing follows metadata; don't wait for the server to close
                if pending > max_event:
                    raise http.too_large(self._provider, max_event, "stream event")
            if not translator.finished:
                raise UpstreamUnavailable(f"upstream '{self._provider}' stream ended early")
        except ParserError as exc:
            raise UpstreamUnavailable(
                f"upstream '{self._provider}' sent a malformed event stream: {type(exc).__name__}"
            ) from exc
        except httpx.HTTPError as exc:
            raise http.map_transport_error(exc, self._provider) from exc
        finally:
            await self._response.aclose()


def _message_of(payload: bytes) -> str | None:
    try:
        data = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        return payload[:500].decode("utf-8", "replace") or None
    message = data.get("message") or data.get("Message") if isinstance(data, dict) else None
    return message if isinstance(message, str) and message else None
