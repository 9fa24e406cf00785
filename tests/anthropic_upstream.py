"""A recording Anthropic upstream on loopback: keeps every request's raw bytes and headers, answers
with scripted Messages answers (JSON bodies, SSE streams written as Anthropic writes them, errors).

Imported by module name (like ``upstreams``); the server is a starlette app under uvicorn in a thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from conftest import LiveServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Answer:
    status: int = 200
    body: dict[str, Any] | None = None
    events: list[tuple[str, dict[str, Any]]] | None = None
    """An SSE stream: (event name, data) pairs, written ``event: X\\ndata: {json}\\n\\n``."""
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None
    """Close the stream after this many events (a stream cut mid-way)."""

    def sse(self) -> bytes:
        assert self.events is not None
        return b"".join(sse_event(name, data) for name, data in self.events)


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    raw: bytes

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.raw))


class RecordingAnthropic:
    """Answers ``POST /v1/messages`` with the next scripted answer (the last one repeats) and
    ``POST /v1/messages/count_tokens`` with ``count_tokens``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.answers: list[Answer] = []
        self.count_tokens = 1234
        app = Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count, methods=["POST"]),
            ]
        )
        self.server = LiveServer(app, http="h11")

    def start(self) -> RecordingAnthropic:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def script(self, *answers: Answer) -> None:
        self.answers = list(answers)

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    async def _record(self, request: Request) -> None:
        self.requests.append(Recorded(request.url.path, dict(request.headers), await request.body()))

    async def _count(self, request: Request) -> Response:
        await self._record(request)
        return Response(json.dumps({"input_tokens": self.count_tokens}), media_type="application/json")

    async def _messages(self, request: Request) -> Response:
        await self._record(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer.events is None:
            return Response(
                json.dumps(answer.body), answer.status, answer.headers, media_type="application/json"
            )
        events = answer.events[: answer.cut_after] if answer.cut_after is not None else answer.events

        async def frames() -> AsyncIterator[bytes]:
            for name, data in events:
                yield sse_event(name, data)
                await asyncio.sleep(0)

        return StreamingResponse(frames(), answer.status, answer.headers, media_type="text/event-stream")


# -- scripted answers, as Anthropic's API reference shows them -------------------------------------------

USAGE = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 200,
    "cache_read_input_tokens": 1800,
    "output_tokens": 42,
}
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"

THINKING_MESSAGE: dict[str, Any] = {
    "id": "msg_01Thinking",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "The user wants the capital. It is Paris.", "signature": SIGNATURE},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT"},
        {
            "type": "text",
            "text": "Paris",
            "citations": [
                {
                    "type": "char_location",
                    "cited_text": "Paris is the capital of France.",
                    "document_index": 0,
                    "document_title": "Atlas",
                    "start_char_index": 0,
                    "end_char_index": 31,
                }
            ],
        },
        {
            "type": "server_tool_use",
            "id": "srvtoolu_01",
            "name": "web_search",
            "input": {"query": "capital of France"},
        },
        {
            "type": "web_search_tool_result",
            "tool_use_id": "srvtoolu_01",
            "content": [
                {
                    "type": "web_search_result",
                    "url": "https://example.org/france",
                    "title": "France",
                    "encrypted_content": "EqgfCioIARgBIiQ3YTAw",
                    "page_age": None,
                }
            ],
        },
    ],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {**USAGE, "server_tool_use": {"web_search_requests": 1}, "service_tier": "standard"},
}

THINKING_STREAM: list[tuple[str, dict[str, Any]]] = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01Stream",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**USAGE, "output_tokens": 1},
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Capital "},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "is Paris."},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": SIGNATURE},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Paris"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 42},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def error_answer(status: int, kind: str, message: str) -> Answer:
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CTest"}
    return Answer(status=status, body=body)
