"""AnthropicProvider over httpx.MockTransport: the wire request, error mapping and stream closure."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.config.model import ProviderConfig
from gateway.errors import BadRequest, DeadlineExceeded, UpstreamStatusError, UpstreamUnavailable
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Operation, UpstreamRequest, Usage

FIXTURES = Path(__file__).parent / "fixtures"
Handler = Callable[[httpx.Request], httpx.Response]

MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [{"type": "text", "text": "Hi there."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 0,
        "output_tokens": 3,
    },
}


class RecordedBody(httpx.AsyncByteStream):
    """A response body served in chunks, optionally failing after them; records whether it was closed."""

    def __init__(self, chunks: list[bytes], fail: Exception | None = None) -> None:
        self.chunks = chunks
        self.fail = fail
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fail is not None:
            raise self.fail

    async def aclose(self) -> None:
        self.closed = True


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def sse_response(
    body: RecordedBody, status: int = 200, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status, headers={"content-type": "text/event-stream", **(headers or {})}, stream=body
    )


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., AnthropicProvider]]:
    transports: list[httpx.MockTransport] = []

    def build(handler: Handler, **config: Any) -> AnthropicProvider:
        transport = httpx.MockTransport(handler)
        transports.append(transport)
        settings: dict[str, Any] = {
            "name": "claude",
            "type": "anthropic",
            "api_key": "sk-ant-provider",
            **config,
        }
        return AnthropicProvider(ProviderConfig(**settings), transport)

    yield build
    for transport in transports:
        await transport.aclose()


def chat(stream: bool = False, headers: dict[str, str] | None = None, **fields: Any) -> UpstreamRequest:
    body = {
        "model": "claude-3-5-haiku-latest",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "stream": stream,
        **fields,
    }
    return UpstreamRequest(Operation.CHAT, body, timeout_s=5.0, headers=headers or {})


# --- non-streaming ----------------------------------------------------------------------------------


async def test_send_builds_the_messages_request(make: Callable[..., AnthropicProvider]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=MESSAGE)

    provider = make(handler)
    assert provider.name == "claude"
    response = await provider.send(chat(max_tokens=50, seed=3))
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-provider"
    assert "authorization" not in request.headers
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert "anthropic-beta" not in request.headers
    assert orjson.loads(request.content) == {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 50,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    }
    assert request.extensions["timeout"] == {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}

    assert response.status == 200
    assert response.usage == Usage(prompt_tokens=14, completion_tokens=3, cached_tokens=4)
    completion = ChatCompletion.model_validate(orjson.loads(response.body))
    assert completion.choices[0].message.content == "Hi there."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "claude-3-5-haiku-latest"
    assert completion.usage is not None and completion.usage.prompt_tokens == 14


async def test_headers_forwarded_and_configured(make: Callable[..., AnthropicProvider]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=MESSAGE)

    provider = make(
        handler,
        base_url="https://proxy.internal/anthropic/",
        headers={"X-Team": "ml", "anthropic-beta": "files-api-2025-04-14"},
    )
    client_headers = {
        "Anthropic-Version": "2026-10-21",
        "Anthropic-Beta": "prompt-caching-2024-07-31",
        "x-stainless-retry-count": "0",
    }
    await provider.send(chat(headers=client_headers))
    headers = seen[0].headers
    assert str(seen[0].url) == "https://proxy.internal/anthropic/v1/messages"
    assert headers["anthropic-version"] == "2026-10-21"
    assert headers["anthropic-beta"] == "files-api-2025-04-14,prompt-caching-2024-07-31"
    assert headers["x-team"] == "ml"
    assert "x-stainless-retry-count" not in headers


async def test_base_url_ending_in_v1_is_not_doubled(make: Callable[..., AnthropicProvider]) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=MESSAGE)

    await make(handler, base_url="http://127.0.0.1:9/v1").send(chat())
    assert seen == ["http://127.0.0.1:9/v1/messages"]


async def test_default_max_tokens_option(make: Callable[..., AnthropicProvider]) -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(request.content))
        return httpx.Response(200, json=MESSAGE)

    await make(handler, options={"default_max_tokens": 1000}).send(chat())
    assert bodies[0]["max_tokens"] == 1000


async def test_send_strips_stream_flag(make: Callable[..., AnthropicProvider]) -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(request.content))
        return httpx.Response(200, json=MESSAGE)

    await make(handler).send(chat(stream=True))
    assert "stream" not in bodies[0]


async def test_upstream_error_status_is_mapped(make: Callable[..., AnthropicProvider]) -> None:
    envelope = {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json=envelope, headers={"retry-after": "30"})

    with pytest.raises(UpstreamStatusError) as info:
        await make(handler).send(chat())
    err = info.value
    assert (err.status, err.message, err.type, err.code, err.retry_after) == (
        429,
        "Rate limited",
        "rate_limit_error",
        "rate_limit_error",
        "30",
    )


async def test_malformed_json_is_upstream_unavailable(make: Callable[..., AnthropicProvider]) -> None:
    with pytest.raises(UpstreamUnavailable):
        await make(lambda r: httpx.Response(200, content=b"{not json")).send(chat())
    with pytest.raises(UpstreamUnavailable):
        await make(lambda r: httpx.Response(200, json=[1, 2])).send(chat())
    with pytest.raises(UpstreamUnavailable):
        await make(lambda r: httpx.Response(200, json={"id": "msg_1", "content": None})).send(chat())


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectTimeout("connect timed out"), DeadlineExceeded),
        (httpx.ReadTimeout("read timed out"), DeadlineExceeded),
        (httpx.ConnectError("connection refused"), UpstreamUnavailable),
        (httpx.RemoteProtocolError("peer closed connection"), UpstreamUnavailable),
    ],
)
async def test_transport_errors_are_mapped(
    make: Callable[..., AnthropicProvider], exc: Exception, expected: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(expected):
        await make(handler).send(chat())
    with pytest.raises(expected):
        await make(handler).open_stream(chat(stream=True))


@pytest.mark.parametrize(
    ("operation", "path"),
    [(Operation.EMBEDDINGS, "/v1/embeddings"), (Operation.COMPLETIONS, "/v1/completions")],
)
async def test_only_chat_is_supported(
    make: Callable[..., AnthropicProvider], operation: Operation, path: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent")

    provider = make(handler)
    request = UpstreamRequest(operation, {"model": "claude-3-5-haiku-latest", "input": "x"}, timeout_s=5.0)
    with pytest.raises(BadRequest) as info:
        await provider.send(request)
    assert info.value.param == "model"
    assert info.value.message == f"model 'claude-3-5-haiku-latest' does not support {path}"
    with pytest.raises(BadRequest):
        await provider.open_stream(request)


async def test_untranslatable_request_is_bad_request_before_sending(
    make: Callable[..., AnthropicProvider],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent")

    with pytest.raises(BadRequest) as info:
        await make(handler).send(chat(n=3))
    assert info.value.param == "n"


# --- streaming --------------------------------------------------------------------------------------


async def test_stream_translates_and_closes(make: Callable[..., AnthropicProvider]) -> None:
    body = RecordedBody(split((FIXTURES / "tool_stream.sse").read_bytes(), 7))
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return sse_response(body)

    stream = await make(handler).open_stream(chat(stream=True))
    assert orjson.loads(seen[0].content)["stream"] is True
    assert stream.usage is None
    frames = [frame async for frame in stream]
    await stream.aclose()
    assert body.closed

    chunks = [ChatCompletionChunk.model_validate(orjson.loads(f.removeprefix(b"data: "))) for f in frames]
    assert all(f.startswith(b"data: ") and f.endswith(b"\n\n") for f in frames)
    assert b"[DONE]" not in b"".join(frames)
    assert len({c.id for c in chunks}) == 1
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert [(call.index, call.id) for call in calls if call.id] == [
        (0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6"),
        (1, "toolu_01Qk3WJ8uBDi4gqvU9Fh2AzN"),
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert stream.usage == Usage(prompt_tokens=472, completion_tokens=89)
    assert stream.usage_frame is not None
    usage_chunk = ChatCompletionChunk.model_validate(orjson.loads(stream.usage_frame.removeprefix(b"data: ")))
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.total_tokens == 561


async def test_stream_closes_when_iteration_finishes_without_aclose(
    make: Callable[..., AnthropicProvider],
) -> None:
    body = RecordedBody([(FIXTURES / "cache_stream.sse").read_bytes()])
    stream = await make(lambda r: sse_response(body)).open_stream(chat(stream=True))
    frames = [frame async for frame in stream]
    assert len(frames) == 4
    assert body.closed
    assert stream.usage == Usage(
        prompt_tokens=2012, completion_tokens=4, cached_tokens=1800, cache_write_tokens=200
    )


async def test_stream_upstream_error_status(make: Callable[..., AnthropicProvider]) -> None:
    envelope = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    body = RecordedBody([envelope])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(529, headers={"content-type": "application/json"}, stream=body)

    with pytest.raises(UpstreamStatusError) as info:
        await make(handler).open_stream(chat(stream=True))
    assert (info.value.status, info.value.message, info.value.code) == (529, "Overloaded", "overloaded_error")
    assert body.closed


async def test_stream_error_event_raises_and_closes(make: Callable[..., AnthropicProvider]) -> None:
    body = RecordedBody([(FIXTURES / "error_stream.sse").read_bytes()])
    stream = await make(lambda r: sse_response(body)).open_stream(chat(stream=True))
    frames: list[bytes] = []
    with pytest.raises(UpstreamStatusError) as info:
        async for frame in stream:
            frames.append(frame)
    assert info.value.status == 529
    # Frames before the error event in the same network chunk still reach the client.
    assert b"Once upon" in frames[-1]
    assert body.closed
    await stream.aclose()


@pytest.mark.parametrize("cut", ["mid_event", "at_boundary"])
async def test_truncated_stream_is_upstream_unavailable(
    make: Callable[..., AnthropicProvider], cut: str
) -> None:
    data = (FIXTURES / ("truncated_stream.sse" if cut == "mid_event" else "text_stream.sse")).read_bytes()
    if cut == "at_boundary":
        data = data[: data.index(b"event: message_delta")]
    body = RecordedBody(split(data, 64))
    stream = await make(lambda r: sse_response(body)).open_stream(chat(stream=True))
    frames: list[bytes] = []
    with pytest.raises(UpstreamUnavailable, match="upstream stream ended early"):
        async for frame in stream:
            frames.append(frame)
    assert frames  # what arrived before the cut was passed on
    assert body.closed
    assert stream.usage is None


async def test_transport_error_mid_stream(make: Callable[..., AnthropicProvider]) -> None:
    data = (FIXTURES / "text_stream.sse").read_bytes()
    body = RecordedBody([data[:400]], fail=httpx.ReadError("connection reset by peer"))
    stream = await make(lambda r: sse_response(body)).open_stream(chat(stream=True))
    with pytest.raises(UpstreamUnavailable):
        async for _ in stream:
            pass
    assert body.closed


async def test_timeout_mid_stream(make: Callable[..., AnthropicProvider]) -> None:
    body = RecordedBody([], fail=httpx.ReadTimeout("read timed out"))
    stream = await make(lambda r: sse_response(body)).open_stream(chat(stream=True))
    with pytest.raises(DeadlineExceeded):
        async for _ in stream:
            pass
    assert body.closed


async def test_aclose_mid_iteration_closes_response(make: Callable[..., AnthropicProvider]) -> None:
    body = RecordedBody(split((FIXTURES / "text_stream.sse").read_bytes(), 50))
    stream = await make(lambda r: sse_response(body)).open_stream(chat(stream=True))
    iterator = aiter(stream)
    first = await anext(iterator)
    assert b'"role":"assistant"' in first
    assert not body.closed
    await stream.aclose()
    assert body.closed
    await stream.aclose()  # idempotent


async def test_aclose_before_iteration_closes_response(make: Callable[..., AnthropicProvider]) -> None:
    body = RecordedBody([(FIXTURES / "text_stream.sse").read_bytes()])
    stream = await make(lambda r: sse_response(body)).open_stream(chat(stream=True))
    await stream.aclose()
    assert body.closed


# --- prepared ahead ---------------------------------------------------------------------------------


async def test_a_prepared_request_sends_the_same_bytes(make: Callable[..., AnthropicProvider]) -> None:
    """``prepare`` (dispatch calls it during admission) only moves the translation earlier."""
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(200, json=MESSAGE)

    provider = make(handler)
    await provider.send(chat(max_tokens=50))
    prepared = chat(max_tokens=50)
    provider.prepare(prepared)
    assert prepared.content is not None
    prepared.body["messages"] = []  # what went out was worked out in prepare()
    await provider.send(prepared)
    assert seen[0] == seen[1] == prepared.content
    mismatched = chat(stream=True, max_tokens=50)  # prepared for a stream, then sent plainly
    provider.prepare(mismatched)
    await provider.send(mismatched)
    assert seen[2] == seen[0]
