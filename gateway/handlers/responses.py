"""OpenAI's ``POST /v1/responses``: Responses format in, any provider out (through the chat pipeline),
Responses format back, streamed as OpenAI's event sequence.

Stored conversations: once the tenant is known the pipeline calls ``recall`` (with
``previous_response_id``, the stored chain is put ahead of this turn's input), and after a good answer
``remember`` (``store`` true, the default: the turn is kept for ``previous_response_id``, ``GET`` and
``input_items``), off the request path like the settlement.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway.errors import GatewayError, render_openai
from gateway.handlers.endpoint import ProxyEndpoint
from gateway.ingress.responses import Echo, to_chat_request, to_response
from gateway.ingress.responses_memory import normalized_items, recall
from gateway.ingress.responses_stream import StreamTranslator
from gateway.providers.base import Operation, UpstreamResponse, UpstreamStream
from gateway.responses_api.store import DEFAULT_RETENTION_S, ResponseStore, StoredResponse


class ResponsesIngress:
    """One request's view: the chat form for the pipeline, the Responses form for the client."""

    remembers = True

    def __init__(self) -> None:
        self.response_id = "resp_" + uuid.uuid4().hex
        self.created_at = int(time.time())
        self.echo: Echo | None = None
        self.input_items: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        """The Response object the client got (JSON or the stream's last event), once it has one."""
        self._body: dict[str, Any] = {}
        self._translator: StreamTranslator | None = None
        self._store: ResponseStore | None = None
        self._tenant = ""
        self._ttl_s = DEFAULT_RETENTION_S

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        chat, self.echo, self.input_items = to_chat_request(body)
        self._body = body
        return chat

    async def recall(self, tenant: str, store: ResponseStore | None, ttl_s: int) -> dict[str, Any] | None:
        """The chat body with the stored conversation ahead of this turn, or None without
        ``previous_response_id``. Unknown, another tenant's, deleted or expired: 400."""
        assert self.echo is not None
        self._tenant, self._store, self._ttl_s = tenant, store, ttl_s
        previous = self.echo.previous_response_id
        if previous is None:
            return None
        history = await recall(store, tenant, previous)
        chat, _, _ = to_chat_request({**self._body, "input": history + self.input_items})
        return chat

    async def remember(self, deployment: str) -> None:
        """Keep this turn, if it asked to be kept and was answered (not failed)."""
        final, echo, store = self.final, self.echo, self._store
        if final is None or echo is None or store is None or not echo.store:
            return
        stored = StoredResponse(
            id=self.response_id,
            tenant=self._tenant,
            created_at=self.created_at,
            previous_response_id=echo.previous_response_id,
            input_items=normalized_items(self.input_items, self.response_id),
            response=final,
            deployment=deployment,
        )
        await store.put(stored, self._ttl_s)

    def modified(self, request: dict[str, Any]) -> dict[str, Any]:
        """Hooks see and change the chat form; the answer still echoes what the client asked."""
        return request

    def forward_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {}

    def response(self, upstream: UpstreamResponse) -> bytes:
        assert self.echo is not None  # request() ran: nothing is dispatched before it
        answer = orjson.loads(upstream.body)
        self.final = to_response(
            answer, response_id=self.response_id, created_at=self.created_at, echo=self.echo
        )
        return orjson.dumps(self.final)

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
        self.final = translator.final

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
        self.final = None  # a failed turn is not kept
        return self._stream_translator().fail(err.message, err.code)


def _chunk(frame: bytes) -> dict[str, Any] | None:
    """An OpenAI SSE frame (``data: {...}\\n\\n``) back to its chunk object; None for ``[DONE]``."""
    payload = frame[frame.index(b":") + 1 :].strip()
    if payload == b"[DONE]":
        return None
    chunk = orjson.loads(payload)
    return chunk if isinstance(chunk, dict) else None


responses = ProxyEndpoint("/v1/responses", Operation.CHAT, ResponsesIngress)
