"""A Gemini API upstream for the wire tests: answers as the Gemini API reference shows its answers
(``GenerateContentResponse`` JSON; ``streamGenerateContent?alt=sse`` as ``data: <json>\\r\\n\\r\\n``
events, closed after the one with ``finishReason``), and records every request as it arrived."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

Answer = Callable[[dict[str, Any]], httpx.Response]

USAGE = {
    "promptTokenCount": 21,
    "candidatesTokenCount": 7,
    "totalTokenCount": 44,
    "cachedContentTokenCount": 4,
    "thoughtsTokenCount": 16,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 21}],
}


def generate(
    parts: list[dict[str, Any]], finish: str = "STOP", usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}],
        "usageMetadata": usage or USAGE,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mN8uaOzKGZ-vqtsP4s2xQQ",
    }


def sse(*events: dict[str, Any]) -> bytes:
    """Gemini's framing: CRLF line ends, one JSON object per event, no [DONE]."""
    return b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\r\n\r\n" for e in events)


def text_stream(words: list[str], *, finish: bool = True) -> bytes:
    events: list[dict[str, Any]] = []
    for i, word in enumerate(words):
        event = generate([{"text": word}], usage={"promptTokenCount": 21, "totalTokenCount": 21})
        del event["candidates"][0]["finishReason"]
        if finish and i == len(words) - 1:
            event["candidates"][0]["finishReason"] = "STOP"
            event["usageMetadata"] = USAGE
        events.append(event)
    return sse(*events)


def google_error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


class FakeGemini:
    """``answer`` decides the reply to each ``generateContent`` body; streams reply ``stream_body``."""

    def __init__(
        self, prefix: str = "/v1beta/models/", auth: tuple[str, str] = ("x-goog-api-key", "gm-key")
    ) -> None:
        self.prefix = prefix
        self.auth = auth
        self.requests: list[httpx.Request] = []
        self.answer: Answer = lambda body: httpx.Response(200, json=generate([{"text": "Bonjour !"}]))
        self.stream_body = text_stream(["Bon", "jour", " !"])
        self.fail_with: httpx.Response | None = None
        self.answer_stream: Answer | None = None

    def json(self, n: int = -1) -> dict[str, Any]:
        return dict(json.loads(self.requests[n].content))

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        name, value = self.auth
        assert request.headers.get(name) == value, dict(request.headers)
        assert request.headers["content-type"] == "application/json"
        assert request.url.path.startswith(self.prefix), request.url.path
        if self.fail_with is not None:
            return self.fail_with
        model, _, method = request.url.path[len(self.prefix) :].partition(":")
        body = json.loads(request.content)
        if method == "streamGenerateContent":
            assert request.url.params["alt"] == "sse"
            if self.answer_stream is not None:
                return self.answer_stream(body)
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=self.stream_body
            )
        if method == "batchEmbedContents":
            assert all(r["model"] == f"models/{model}" for r in body["requests"])
            vectors = [
                {"values": [0.5, -0.25, float(len(r["content"]["parts"][0]["text"]))]}
                for r in body["requests"]
            ]
            return httpx.Response(200, json={"embeddings": vectors})
        if method == "predict":
            if model.startswith("gemini-embedding-") and len(body["instances"]) > 1:
                # Vertex AI: "gemini-embedding-001 ... only supports one instance per request"
                error = google_error(400, "INVALID_ARGUMENT", "Only one instance per request is supported.")
                return httpx.Response(400, json=error)
            predictions = [
                {
                    "embeddings": {
                        "values": [0.5, -0.25, float(len(instance["content"]))],
                        "statistics": {"token_count": 3, "truncated": False},
                    }
                }
                for instance in body["instances"]
            ]
            return httpx.Response(200, json={"predictions": predictions})
        assert method == "generateContent", method
        return self.answer(body)
