"""OpenAI's ``POST /v1/responses``: Responses format in, any provider out (through the chat pipeline),
Responses format back, streamed as OpenAI's event sequence."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway.errors import GatewayError, render_openai
from gateway.handlers.endpoint import ProxyEndpoint
from gateway.ingress.responses import Echo, to_chat_request, to_response
from gateway.ingress.responses_stream import StreamTranslator
from gateway.providers.base import Operation, UpstreamResponse, UpstreamStream


class ResponsesIngress:
    """One request's view: the chat form for the pipeline, the Responses form for the client."""

    __slots__ = ("_translator", "created_at", "echo", "input_items", "response_id")

    def __init__(self) -> None:
        self.response_id = "resp_" + uuid.uuid4().hex
        self.created_at = int(time.time())
        self.echo: Echo | None = None
        self.input_items: list[dict[str, Any]] = []
        self._translator: StreamTranslator | None = None

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        chat, self.echo, self.input_items = to_chat_request(body)
        return chat

    def modified(self, request: dict[str, Any]) -> dict[str, Any]:
        """Hooks see and change the chat form; the answer still echoes what the client asked."""
        return request

    def forward_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {}

    def response(self, upstream: UpstreamResponse) -> bytes:
        assert self.echo is not None  # request() ran: nothing is dispatched before it
        answer = orjson.loads(upstream.body)
        return orjson.dumps(
            to_response(answer, response_id=self.response_id, created_at=self.created_at, echo=self.echo)
        )

    async def stream(self, upstream: UpstreamStream, include_usage: bool) -> AsyncIterator[bytes]:
        translator = self._stream_translator()
        async for frame in upstream:
            chunk = _chunk(frame)
            if chunk is not None:
                for out in translator.feed(chunk):
                    yield out
        if upstream.usage_frame is not None and (chunk := _chunk(upstream.usage_frame)) is not None:
            for out in translator.feed(chunk):
                yield out
        for out in translator.finish():
            yield out

    def _stream_translator(self) -> StreamTranslator:
        if self._translator is None:
            assert self.echo is not None
            self._translator = StreamTranslator(
                response_id=self.response_id, created_at=self.created_at, echo=self.echo
            )
        return self._translator

    def error(self, err: GatewayError) -> bytes:
        return render_openai(err)

    def stream_error(self, err: GatewayError) -> bytes:
        return self._stream_translator().fail(err.message, err.code)


def _chunk(frame: bytes) -> dict[str, Any] | None:
    """An OpenAI SSE frame (``data: {...}\\n\\n``) back to its chunk object; None for ``[DONE]``."""
    payload = frame[frame.index(b":") + 1 :].strip()
    if payload == b"[DONE]":
        return None
    chunk = orjson.loads(payload)
    return chunk if isinstance(chunk, dict) else None


responses = ProxyEndpoint("/v1/responses", Operation.CHAT, ResponsesIngress)
