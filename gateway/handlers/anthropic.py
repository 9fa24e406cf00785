"""Anthropic's ``POST /v1/messages``: Anthropic format in, any provider out, Anthropic format back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway.errors import GatewayError, render_anthropic
from gateway.handlers.endpoint import ProxyEndpoint
from gateway.ingress.anthropic import StreamTranslator, to_anthropic_response, to_openai_request
from gateway.ingress.anthropic_remap import remap
from gateway.providers.base import Operation, UpstreamResponse, UpstreamStream

FORWARDED = ("anthropic-version", "anthropic-beta")


class AnthropicIngress:
    stateful = False

    def __init__(self) -> None:
        self.model = ""
        self.native: dict[str, Any] = {}
        self._view: dict[str, Any] = {}

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        self.model = str(body.get("model") or "")
        self.native = body
        self._view = to_openai_request(body)
        return self._view

    def modified(self, request: dict[str, Any]) -> dict[str, Any]:
        """A pre hook's version of the request, laid over the native body (``anthropic_remap``)."""
        self.native = remap(self.native, self._view, request)
        self._view = to_openai_request(self.native)
        return self._view

    def forward_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {h: v for h in FORWARDED if (v := headers.get(h))}

    def response(self, upstream: UpstreamResponse) -> bytes:
        return orjson.dumps(to_anthropic_response(orjson.loads(upstream.body), model=self.model))

    async def stream(self, upstream: UpstreamStream, include_usage: bool) -> AsyncIterator[bytes]:
        translator = StreamTranslator(model=self.model, message_id="msg_" + uuid.uuid4().hex[:24])
        async for frame in upstream:
            for out in translator.feed(_chunk(frame)):
                yield out
        if upstream.usage_frame is not None:
            for out in translator.feed(_chunk(upstream.usage_frame)):
                yield out
        for out in translator.finish():
            yield out

    def error(self, err: GatewayError) -> bytes:
        return render_anthropic(err)

    def stream_error(self, err: GatewayError) -> bytes:
        return StreamTranslator.error_frame(err.message, err.status)


def _chunk(frame: bytes) -> dict[str, Any]:
    """An OpenAI SSE frame (``data: {...}\\n\\n``) back to its chunk object."""
    payload = frame[frame.index(b":") + 1 :].strip()
    chunk = orjson.loads(payload)
    return chunk if isinstance(chunk, dict) else {}


messages = ProxyEndpoint("/v1/messages", Operation.CHAT, AnthropicIngress)
