"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, Together, Groq, LM Studio, ...).

Bodies pass through untouched apart from ``model`` (already the upstream name), for streams
``stream_options.include_usage`` which the gateway always asks for so it can bill the stream, and, for
reasoning models (``REASONING``), ``max_tokens`` sent as ``max_completion_tokens``: they reject
``max_tokens``, which the gateway itself writes (a budget's output bound, a translated ``/v1/messages``
request) and which other OpenAI-compatible servers may not know under its newer name.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from gateway.config.model import ProviderConfig
from gateway.errors import UpstreamStatusError, UpstreamUnavailable
from gateway.providers import http
from gateway.providers.base import RESPONSES_EXTRA, Operation, UpstreamRequest, UpstreamResponse, Usage
from gateway.sse import LimitExceeded, SSEParser, data_frame

PATHS = {
    Operation.CHAT: "/chat/completions",
    Operation.COMPLETIONS: "/completions",
    Operation.EMBEDDINGS: "/embeddings",
}

REASONING = re.compile(r"(?:.*/)?(?:ft:)?(?:o\d+|gpt-5)(?:[-.:_].*)?", re.IGNORECASE)
"""Upstream model names of OpenAI's reasoning families (o1, o3, o4-mini, gpt-5, gpt-5.1, ...; an
``org/`` or ``ft:`` prefix allowed): they take ``max_completion_tokens`` and answer 400 to ``max_tokens``."""


class OpenAIProvider:
    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport) -> None:
        self.name = config.name
        self._transport = transport
        self._base = config.base_url.rstrip("/")
        self._limits = config.limits
        self._headers = {"content-type": "application/json", **self._auth_headers(config), **config.headers}
        if not http.has_user_agent(self._headers):
            self._headers["user-agent"] = http.USER_AGENT

    def _auth_headers(self, config: ProviderConfig) -> dict[str, str]:
        return {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}

    def url(self, request: UpstreamRequest) -> str:
        return self._base + PATHS[request.operation]

    def upstream_body(self, request: UpstreamRequest) -> dict[str, Any]:
        body = request.body
        if RESPONSES_EXTRA in body:  # Responses-only fields: a chat server would refuse them
            body = {k: v for k, v in body.items() if k != RESPONSES_EXTRA}
        if "max_tokens" in body and request.operation is Operation.CHAT:
            body = _completion_tokens(body)
        if request.stream and request.operation is not Operation.EMBEDDINGS:
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                options = dict(options) if isinstance(options, dict) else {}
                options["include_usage"] = True
                body = {**body, "stream_options": options}
        return body

    def prepare(self, request: UpstreamRequest) -> None:
        """Encode the body ahead of the call (dispatch does it while admission is in flight)."""
        request.content = orjson.dumps(self.upstream_body(request))

    def _payload(self, request: UpstreamRequest) -> dict[str, Any] | bytes:
        return request.content if request.content is not None else self.upstream_body(request)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        raw, data = await self._post(request)
        return UpstreamResponse(raw, Usage.from_openai(data.get("usage")))

    async def open_stream(self, request: UpstreamRequest) -> OpenAIStream:
        return OpenAIStream(self.name, await self._open(request), self._parser())

    async def _post(self, request: UpstreamRequest) -> tuple[bytes, dict[str, Any]]:
        """The upstream's JSON answer to ``request`` (raw and decoded); a non-object is a 502."""
        raw, data = await http.post_json(
            self._transport,
            self.name,
            self.url(request),
            body=self._payload(request),
            headers=self._headers,
            timeout_s=request.timeout_s,
            limits=self._limits,
        )
        if not isinstance(data, dict):
            raise UpstreamUnavailable(f"upstream '{self.name}' sent a malformed body")
        return raw, data

    async def _open(self, request: UpstreamRequest) -> http.OpenResponse:
        return await http.open_stream(
            self._transport,
            self.name,
            self.url(request),
            body=self._payload(request),
            headers=self._headers,
            timeout_s=request.timeout_s,
            limits=self._limits,
        )

    def _parser(self) -> SSEParser:
        return SSEParser(self._limits.max_event_bytes, self._limits.max_stream_bytes)


def _completion_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """``max_tokens`` as ``max_completion_tokens`` for a reasoning model (a copy; else ``body``)."""
    model = body.get("model")
    if not (isinstance(model, str) and REASONING.fullmatch(model)):
        return body
    out = {k: v for k, v in body.items() if k != "max_tokens"}
    if out.get("max_completion_tokens") is None:  # a bound the client set itself wins
        out["max_completion_tokens"] = body["max_tokens"]
    return out


class OpenAIStream:
    """Forwards OpenAI SSE frames as they arrive; keeps the usage chunk aside for the core."""

    def __init__(self, provider: str, response: http.OpenResponse, parser: SSEParser | None = None) -> None:
        self._provider = provider
        self._response = response
        self._parser = parser or SSEParser()
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parser = self._parser
        try:
            async for raw in self._response.aiter_bytes():
                for event in parser.events(raw):
                    data = event.data
                    if data == b"[DONE]":
                        return
                    frame = self._frame(event.event, data)
                    if frame is not None:
                        yield frame
        except httpx.HTTPError as exc:
            raise http.map_transport_error(exc, self._provider) from exc
        except LimitExceeded as exc:
            raise http.map_limit_error(exc, self._provider) from exc
        finally:
            await self._response.aclose()
        raise UpstreamUnavailable(f"upstream '{self._provider}' stream ended before [DONE]")

    def _frame(self, event: str | None, data: bytes) -> bytes | None:
        if event == "error" or data.startswith(b'{"error"'):
            raise _stream_error(data)
        # Parse only chunks that carry usage; every other chunk passes through as bytes.
        at = data.rfind(b'"usage"')
        if at >= 0 and not data[at + 7 :].lstrip(b" :").startswith(b"null"):
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise UpstreamUnavailable(f"upstream '{self._provider}' sent a malformed chunk") from exc
            usage = Usage.from_openai(chunk.get("usage")) if isinstance(chunk, dict) else None
            if usage is not None:
                self.usage = usage
                if not chunk.get("choices"):
                    self.usage_frame = data_frame(data)
                    return None
        return data_frame(data)

    async def aclose(self) -> None:
        await self._response.aclose()


def _stream_error(data: bytes) -> UpstreamStatusError:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = None
    err = payload.get("error") if isinstance(payload, dict) else None
    message = str(err.get("message")) if isinstance(err, dict) else data[:200].decode("utf-8", "replace")
    return UpstreamStatusError(502, f"upstream stream failed: {message}", type="server_error")
