"""Anthropic's ``POST /v1/messages``: Anthropic format in, any provider out, Anthropic format back.

The pipeline reads the request in its OpenAI form; the body as sent travels beside it
(``NativeRequest``), so an attempt on an ``anthropic`` deployment sends it, and gets back, as it is:
the answer is then passed on untouched (a body as the upstream sent it, a stream event by event,
the upstream's own 4xx error). Any other deployment gets the translation, and its answer is
translated back.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamStatusError, render_anthropic
from gateway.handlers.endpoint import ProxyEndpoint
from gateway.ingress.anthropic import StreamTranslator, to_anthropic_response, to_openai_request
from gateway.ingress.anthropic_remap import remap
from gateway.ingress.anthropic_view import translatable
from gateway.pipeline.usage import chunk_of
from gateway.providers.base import NativeRequest, Operation, UpstreamResponse, UpstreamStream

FORWARDED = ("anthropic-version", "anthropic-beta")
FORMAT = "anthropic"


class AnthropicIngress:
    stateful = False

    def __init__(self) -> None:
        self.model = ""
        self.native: NativeRequest | None = None
        self._view: dict[str, Any] = {}

    def request(self, body: dict[str, Any], raw: bytes = b"") -> dict[str, Any]:
        self.model = str(body.get("model") or "")
        self.native = NativeRequest(FORMAT, body, raw or None)
        self._view = self._translate(body)
        return self._view

    def _translate(self, body: dict[str, Any]) -> dict[str, Any]:
        """The OpenAI view; what it could not carry is noted for dispatch (``anthropic_view``)."""
        assert self.native is not None
        view_of, lossy = translatable(body)
        view = to_openai_request(view_of)  # a malformed request is a 400 whoever would serve it
        self.native.untranslatable = None
        if lossy:
            try:
                to_openai_request(body)
            except GatewayError as err:  # the reason an OpenAI-form deployment cannot take it
                self.native.untranslatable = err
        return view

    def modified(self, request: dict[str, Any]) -> dict[str, Any]:
        """A pre hook's version of the request, laid over the native body (``anthropic_remap``)."""
        assert self.native is not None
        self.native.body = remap(self.native.body, self._view, request)
        self.native.raw = None
        self._view = self._translate(self.native.body)
        return self._view

    def forward_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {h: v for h in FORWARDED if (v := headers.get(h))}

    def response(self, upstream: UpstreamResponse) -> bytes:
        if upstream.native is not None:
            return upstream.native
        return orjson.dumps(to_anthropic_response(orjson.loads(upstream.body), model=self.model))

    async def stream(self, upstream: UpstreamStream, include_usage: bool) -> AsyncIterator[bytes]:
        if self.native is not None and self.native.served:
            async for frame in upstream:  # Anthropic's own events, as its upstream sent them
                yield frame
        else:
            translator = StreamTranslator(model=self.model, message_id="msg_" + uuid.uuid4().hex[:24])
            async for frame in upstream:
                for out in translator.feed(_chunk(frame)):
                    yield out
            if upstream.usage_frame is not None:
                for out in translator.feed(_chunk(upstream.usage_frame)):
                    yield out
            for out in translator.finish():
                yield out
        cost = _cost(upstream.usage_frame)
        if cost is not None:
            # An SSE comment: every SSE client skips it, so Anthropic's events stay exactly Anthropic's.
            yield b": x-gateway-cost-usd " + cost.encode() + b"\n\n"

    def error(self, err: GatewayError) -> bytes:
        own = _own(err)
        return own if own is not None else render_anthropic(err)

    def stream_error(self, err: GatewayError) -> bytes:
        own = _own(err)
        return own if own is not None else StreamTranslator.error_frame(err.message, err.status)


def _own(err: GatewayError) -> bytes | None:
    """An Anthropic upstream's own error body or event, passed on as it said it."""
    if isinstance(err, UpstreamStatusError) and err.native is not None and err.native[0] == FORMAT:
        return err.native[1]
    return None


def _cost(usage_frame: bytes | None) -> str | None:
    """The gateway's cost from the priced usage chunk (``x_gateway.cost_usd``), if there is one."""
    chunk = chunk_of(usage_frame) if usage_frame is not None else None
    extra = chunk.get("x_gateway") if chunk is not None else None
    cost = extra.get("cost_usd") if isinstance(extra, dict) else None
    return cost if isinstance(cost, str) else None


def _chunk(frame: bytes) -> dict[str, Any]:
    """An OpenAI SSE frame (``data: {...}\\n\\n``) back to its chunk object."""
    payload = frame[frame.index(b":") + 1 :].strip()
    chunk = orjson.loads(payload)
    return chunk if isinstance(chunk, dict) else {}


messages = ProxyEndpoint("/v1/messages", Operation.CHAT, AnthropicIngress)
