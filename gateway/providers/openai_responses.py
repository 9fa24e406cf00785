"""An OpenAI-type server reached through its native Responses API (``type: openai_responses``).

Same connection, auth and limits as ``openai``; the chat body the pipeline carries is sent as a
Responses request (``POST {base_url}/responses``) and the answer comes back as chat
(``responses_translate.py``), so every stage, and every ingress (``/v1/chat/completions``,
``/v1/messages``, ``/v1/responses``), works with it unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from gateway.errors import UpstreamUnavailable
from gateway.providers import http
from gateway.providers.base import Operation, UpstreamRequest, UpstreamResponse, Usage
from gateway.providers.openai import OpenAIProvider, _stream_error
from gateway.providers.responses_translate import ChunkTranslator, to_chat_answer, to_responses_request
from gateway.sse import LimitExceeded, SSEParser, data_frame


class OpenAIResponsesProvider(OpenAIProvider):
    def url(self, request: UpstreamRequest) -> str:
        if request.operation is Operation.CHAT:
            return self._base + "/responses"
        return super().url(request)

    def upstream_body(self, request: UpstreamRequest) -> dict[str, Any]:
        if request.operation is Operation.CHAT:
            return to_responses_request(request.body)
        return super().upstream_body(request)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if request.operation is not Operation.CHAT:
            return await super().send(request)
        _, data = await self._post(request)
        answer, usage = to_chat_answer(data, str(request.body.get("model", "")))
        return UpstreamResponse(orjson.dumps(answer), usage)

    async def open_stream(self, request: UpstreamRequest) -> Any:
        if request.operation is not Operation.CHAT:
            return await super().open_stream(request)
        model = str(request.body.get("model", ""))
        return ResponsesStream(self.name, await self._open(request), self._parser(), model)


class ResponsesStream:
    """A Responses event stream as chat SSE frames; the usage chunk kept aside for the core."""

    def __init__(self, provider: str, response: http.OpenResponse, parser: SSEParser, model: str) -> None:
        self._provider = provider
        self._response = response
        self._parser = parser
        self._translator = ChunkTranslator(model)
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        translator = self._translator
        try:
            async for raw in self._response.aiter_bytes():
                for event in self._parser.events(raw):
                    if event.event in ("error", "response.failed") or event.data.startswith(b'{"error"'):
                        raise _stream_error(event.data)
                    try:
                        payload = orjson.loads(event.data)
                    except orjson.JSONDecodeError as exc:
                        raise UpstreamUnavailable(
                            f"upstream '{self._provider}' sent a malformed event"
                        ) from exc
                    if not isinstance(payload, dict):
                        continue
                    if payload.get("type") in ("error", "response.failed"):
                        raise _stream_error(event.data)
                    for chunk in translator.feed(payload):
                        yield data_frame(chunk)
                    if translator.done:
                        usage = translator.usage_chunk()
                        if usage is not None:
                            self.usage = Usage.from_openai(translator.usage)
                            self.usage_frame = data_frame(usage)
                        return
        except httpx.HTTPError as exc:
            raise http.map_transport_error(exc, self._provider) from exc
        except LimitExceeded as exc:
            raise http.map_limit_error(exc, self._provider) from exc
        finally:
            await self._response.aclose()
        raise UpstreamUnavailable(f"upstream '{self._provider}' stream ended before response.completed")

    async def aclose(self) -> None:
        await self._response.aclose()
