"""Test upstreams: an OpenAI-compatible fake behind ``httpx.MockTransport``, recording what it got."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx


def chat_body(model: str, content: str = "Hello there!", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-up-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        **extra,
    }


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-up-s",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        "usage": None,
    }


def sse(*events: dict[str, Any] | str) -> bytes:
    out = b""
    for e in events:
        payload = e if isinstance(e, str) else json.dumps(e)
        out += b"data: " + payload.encode() + b"\n\n"
    return out


def stream_chunks(model: str, words: list[str], *, usage: bool) -> list[dict[str, Any]]:
    chunks = [chunk(model, {"role": "assistant", "content": ""})]
    chunks += [chunk(model, {"content": w}) for w in words]
    chunks.append(chunk(model, {}, "stop"))
    if usage:
        chunks.append(
            {
                "id": "chatcmpl-up-s",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": len(words),
                    "total_tokens": 10 + len(words),
                },
            }
        )
    return chunks


class GatedStream(httpx.AsyncByteStream):
    """Sends ``head`` at once, then waits for ``gate`` before sending ``tail``; records closing."""

    def __init__(
        self, head: bytes, tail: bytes, gate: threading.Event | None, *, broken: bool = False
    ) -> None:
        self.head, self.tail, self.gate, self.broken = head, tail, gate, broken
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        # The gate is set from the test's thread; poll it rather than share an asyncio.Event across loops.
        while self.gate is not None and not self.gate.is_set():  # noqa: ASYNC110 - a threading.Event
            await asyncio.sleep(0.005)
        if self.broken:
            raise httpx.ReadError("connection reset by peer")
        if self.tail:
            yield self.tail

    async def aclose(self) -> None:
        self.closed = True


class FakeOpenAI:
    """Answers like OpenAI; every request is kept in ``requests`` for assertions."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.streams: list[GatedStream] = []
        self.gate: threading.Event | None = None
        self.fail_with: httpx.Response | None = None
        self.words = ["Hello", " there", "!"]
        self.break_streams = False

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def json(self, n: int = -1) -> dict[str, Any]:
        return dict(json.loads(self.requests[n].content))

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with is not None:
            return self.fail_with
        body = json.loads(request.content)
        model = body.get("model", "")
        path = request.url.path
        if path.endswith("/embeddings"):
            return httpx.Response(200, json=embeddings_body(body))
        if path.endswith("/completions") and not path.endswith("/chat/completions"):
            text = {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "text": " world", "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
            }
            return httpx.Response(200, json=text)
        if body.get("stream"):
            include = (body.get("stream_options") or {}).get("include_usage") is True
            chunks = stream_chunks(model, self.words, usage=include)
            head = sse(chunks[0], chunks[1])
            tail = sse(*chunks[2:], "[DONE]")
            stream = GatedStream(head, tail, self.gate, broken=self.break_streams)
            self.streams.append(stream)
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)
        if body.get("tools") and body["messages"][-1]["role"] == "user":
            call = {
                "id": "call_1",
                "type": "function",
                "function": {"name": body["tools"][0]["function"]["name"], "arguments": '{"city": "Paris"}'},
            }
            answer = chat_body(model)
            answer["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
            answer["choices"][0]["finish_reason"] = "tool_calls"
            return httpx.Response(200, json=answer)
        if body.get("response_format", {}).get("type") == "json_schema":
            return httpx.Response(200, json=chat_body(model, content='{"answer": 42}'))
        return httpx.Response(200, json=chat_body(model))


def embeddings_body(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for i, _ in enumerate(inputs):
        vector = [0.5, -0.25, 0.125]
        value: Any = vector
        if body.get("encoding_format") == "base64":
            value = base64.b64encode(struct.pack("<3f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }


ANTHROPIC_STREAM = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_up_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-3-5-haiku-latest",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 11,
                    "output_tokens": 1,
                    "cache_read_input_tokens": 4,
                    "cache_creation_input_tokens": 0,
                },
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Bonjour"}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " !"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 5},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


class FakeAnthropic:
    """Answers like Anthropic's Messages API."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def json(self, n: int = -1) -> dict[str, Any]:
        return dict(json.loads(self.requests[n].content))

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        if body.get("stream"):
            data = b"".join(
                f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
                for name, payload in ANTHROPIC_STREAM
            )
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=data)
        message = {
            "id": "msg_up_2",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": "Bonjour !"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 5},
        }
        if body.get("tools"):
            message["content"] = [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": body["tools"][0]["name"],
                    "input": {"city": "Paris"},
                }
            ]
            message["stop_reason"] = "tool_use"
        return httpx.Response(200, json=message)


class HostRouter(httpx.AsyncBaseTransport):
    """One transport for the gateway's client, dispatching by upstream host to each fake."""

    def __init__(self, **handlers: Any) -> None:
        self.transports = {host.replace("_", "."): httpx.MockTransport(h) for host, h in handlers.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.transports[request.url.host].handle_async_request(request)
