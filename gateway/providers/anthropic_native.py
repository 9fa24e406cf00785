"""``/v1/messages`` to an ``anthropic`` deployment with no round trip through the OpenAI form.

The client's body goes upstream as it was sent, byte for byte, unless the gateway must change it: the
model name (the deployment's ``upstream``) and ``max_tokens`` when admission or a pre hook set another;
then it is re-encoded with its keys in the client's order. The answer comes back as the upstream sent
it: a non-stream body unchanged (``UpstreamResponse.native``), a stream event by event (each event's
``event:`` and ``data:`` as sent). Alongside, the answer is read as the translated path reads it
(``anthropic_response``), so usage (cache reads and writes included), hooks, logs and the cache see
the OpenAI form they expect.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import orjson

from gateway.errors import UpstreamUnavailable
from gateway.providers import http
from gateway.providers.anthropic_response import stream_error, to_openai_response, usage_from_anthropic
from gateway.providers.base import NativeRequest, UpstreamRequest, UpstreamResponse, Usage
from gateway.sse import Event, LimitExceeded, SSEParser, data_frame, named_frame
from gateway.tokens import count_text

FORMAT = "anthropic"


def payload(request: UpstreamRequest, native: NativeRequest) -> bytes:
    """The bytes to send: the client's own when nothing must change, else its body re-encoded."""
    body = native.body
    changes: dict[str, Any] = {}
    model = request.body.get("model")
    if body.get("model") != model:
        changes["model"] = model
    bound = request.body.get("max_tokens")
    if isinstance(bound, int) and bound != body.get("max_tokens"):
        changes["max_tokens"] = bound
    if not changes and native.raw is not None:
        return native.raw
    return orjson.dumps({**body, **changes})


def answer(content: bytes, message: Any, model: str) -> UpstreamResponse:
    """A non-stream Messages answer: the upstream's bytes for the client, its OpenAI form for the rest."""
    if not isinstance(message, dict):
        raise UpstreamUnavailable("malformed upstream body")
    completion, usage = to_openai_response(message, model=model)
    return UpstreamResponse(body=orjson.dumps(completion), usage=usage, native=content)


class NativeStream:
    """An Anthropic stream passed on event by event as Anthropic sent it.

    ``usage`` follows the stream: ``message_start``'s counts (input, cache reads and writes) as soon as
    it arrives, the final counts at ``message_delta``. A stream that ends before ``message_delta`` (cut,
    or the client left) is billed its input as reported plus the text and thinking it streamed so far,
    counted with tiktoken (``aclose``). An ``error`` event before the first event went out is raised
    (dispatch may retry or fall back); after it, it is raised carrying the upstream's own event, which
    the ingress passes on as the stream's last.
    """

    def __init__(self, provider: str, response: http.OpenResponse, parser: SSEParser, model: str) -> None:
        self._provider = provider
        self._response = response
        self._parser = parser
        self._model = model
        self._id: object = None
        self.done = False
        self._started: dict[str, Any] | None = None
        self._texts: list[str] = []
        self._final = False
        self._frames: AsyncGenerator[bytes, None] | None = None
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._frames is None:
            self._frames = self._iterate()
        return self._frames

    async def aclose(self) -> None:
        if self._frames is not None:
            await self._frames.aclose()
        await self._response.aclose()
        if self._started is not None and not self._final:
            self._estimate()

    async def _iterate(self) -> AsyncGenerator[bytes, None]:
        parser = self._parser
        sent = False
        try:
            async for chunk in self._response.aiter_bytes():
                for event in parser.feed(chunk):
                    frame = self._read(event, sent)
                    if frame is None:
                        continue
                    yield frame
                    sent = True
                    if self.done:
                        return  # nothing follows message_stop; don't wait for the server to close
            for event in parser.flush():
                frame = self._read(event, sent)
                if frame is not None:
                    yield frame
            if not self.done:
                raise UpstreamUnavailable(f"upstream '{self._provider}' stream ended early")
        except httpx.HTTPError as exc:
            raise http.map_transport_error(exc, self._provider) from exc
        except LimitExceeded as exc:
            raise http.map_limit_error(exc, self._provider) from exc
        finally:
            await self._response.aclose()

    def _read(self, event: Event, sent: bool) -> bytes | None:
        """The event's frame as the upstream sent it, after reading what the gateway needs from it."""
        frame = named_frame(event.event, event.data) if event.event else data_frame(event.data)
        try:
            data = orjson.loads(event.data) if event.data else {}
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable(f"upstream '{self._provider}' sent a malformed event") from None
        if not isinstance(data, dict):
            raise UpstreamUnavailable(f"upstream '{self._provider}' sent a malformed event")
        kind = data.get("type") or event.event
        if kind == "content_block_delta":  # the usual event first
            delta = data.get("delta")
            if isinstance(delta, dict):
                self._keep(delta)
        elif kind == "message_start":
            message = data.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            self._started = dict(usage) if isinstance(usage, dict) else {}
            self._id = message.get("id") if isinstance(message, dict) else None
            self.usage = usage_from_anthropic(self._started)
        elif kind == "message_delta":
            self._finish(data.get("usage"))
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            err = stream_error(data.get("error"))
            if sent:
                err.native = (FORMAT, frame)  # the client gets the upstream's own error event
            raise err
        return frame

    def _keep(self, delta: dict[str, Any]) -> None:
        """What the model generated, for the count of a stream cut before its final usage."""
        for key in ("text", "thinking", "partial_json"):
            piece = delta.get(key)
            if isinstance(piece, str):
                self._texts.append(piece)
                return

    def _finish(self, final: object) -> None:
        """``message_delta``: its counts are cumulative and win; input and cache counts may be absent."""
        counts = dict(self._started or {})
        if isinstance(final, dict):
            counts.update((k, v) for k, v in final.items() if v is not None)
        self._final = True
        self.usage = usage_from_anthropic(counts)
        suffix = self._id.removeprefix("msg_") if isinstance(self._id, str) else "anthropic"
        chunk = {
            "id": "chatcmpl-" + suffix,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self._model,
            "choices": [],
            "usage": self.usage.to_openai(),
        }
        self.usage_frame = data_frame(orjson.dumps(chunk))

    def _estimate(self) -> None:
        started = dict(self._started or {})
        generated = "".join(self._texts)
        started["output_tokens"] = count_text(generated, self._model) if generated else 0
        self.usage = usage_from_anthropic(started)
        self.usage.estimated = True
        self._final = True
