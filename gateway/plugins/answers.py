"""Answers as the hooks see them and as the client gets them back: a stream's frames assembled into one
``chat.completion`` (or ``text_completion``) for a post hook, and a whole answer (a plugin's ``respond``,
a post hook's ``modify``) cut back into stream frames. Pure: frames in, dicts out, and back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from gateway.providers.base import UpstreamStream, Usage
from gateway.sse import data_frame

_TRANSPORT_FIELDS = ("model", "stream", "stream_options")


def keep_transport(original: dict[str, Any], modified: dict[str, Any]) -> dict[str, Any]:
    """A pre hook's request with the fields it may not change put back: the model (the route was chosen
    for it) and the stream switches (the client's connection already depends on them)."""
    out = dict(modified)
    for name in _TRANSPORT_FIELDS:
        if name in original:
            out[name] = original[name]
        else:
            out.pop(name, None)
    return out


def annotate(body: bytes, annotations: dict[str, dict[str, Any]]) -> bytes:
    """The JSON answer with ``x_gateway.plugins.<name>`` added (any wire format: it is a top-level key)."""
    data = orjson.loads(body)
    if not isinstance(data, dict):
        return body
    extra = data.get("x_gateway")
    extra = dict(extra) if isinstance(extra, dict) else {}
    extra["plugins"] = annotations
    data["x_gateway"] = extra
    return orjson.dumps(data)


def _payloads(frames: Sequence[bytes]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for frame in frames:
        for line in frame.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]" or not payload:
                continue
            chunk = orjson.loads(payload)
            if isinstance(chunk, dict):
                out.append(chunk)
    return out


def assemble(frames: Sequence[bytes], usage_frame: bytes | None = None) -> dict[str, Any]:
    """The whole answer a stream's chunks add up to, in the non-stream form of the same API."""
    chunks = _payloads([*frames, *([usage_frame] if usage_frame else [])])
    first = chunks[0] if chunks else {}
    text_api = first.get("object") == "text_completion"
    choices: dict[int, dict[str, Any]] = {}
    usage: Any = None
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            index = c.get("index", 0)
            if text_api:
                slot = choices.setdefault(index, {"index": index, "text": "", "finish_reason": None})
                slot["text"] += c.get("text") or ""
            else:
                slot = choices.setdefault(
                    index,
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": None},
                        "finish_reason": None,
                    },
                )
                _add_delta(slot["message"], c.get("delta") or {})
                logprobs = c.get("logprobs")
                if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
                    # per-token logprobs, kept for the post hooks that judge confidence (review)
                    slot.setdefault("logprobs", {"content": []})["content"].extend(logprobs["content"])
            if c.get("finish_reason"):
                slot["finish_reason"] = c["finish_reason"]
    out: dict[str, Any] = {
        "id": first.get("id", ""),
        "object": "text_completion" if text_api else "chat.completion",
        "created": first.get("created", 0),
        "model": first.get("model", ""),
        "choices": [choices[i] for i in sorted(choices)],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def _add_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    for name in ("content", "refusal"):
        piece = delta.get(name)
        if isinstance(piece, str):
            message[name] = (message.get(name) or "") + piece
    for call in delta.get("tool_calls") or ():
        calls = message.setdefault("tool_calls", [])
        i = call.get("index", len(calls))
        while len(calls) <= i:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        slot = calls[i]
        if call.get("id"):
            slot["id"] = call["id"]
        fn = call.get("function") or {}
        slot["function"]["name"] += fn.get("name") or ""
        slot["function"]["arguments"] += fn.get("arguments") or ""


def frames_of(answer: dict[str, Any]) -> list[bytes]:
    """A whole answer as stream chunks: per choice, its content (and tool calls), then its finish.

    An ``x_gateway`` object a plugin put in the answer (RAG's ``citations``) rides on the last chunk,
    so a streamed answer carries what the same answer unstreamed carries at its top level."""
    text_api = answer.get("object") == "text_completion"
    head = {
        "id": answer.get("id") or "chatcmpl-plugin",
        "object": "text_completion" if text_api else "chat.completion.chunk",
        "created": answer.get("created") or 0,
        "model": answer.get("model") or "",
    }
    chunks: list[dict[str, Any]] = []
    for c in answer.get("choices") or ():
        index = c.get("index", 0)
        if text_api:
            parts = [{"index": index, "text": c.get("text") or "", "finish_reason": None}]
        else:
            m = c.get("message") or {}
            delta: dict[str, Any] = {"role": m.get("role") or "assistant", "content": m.get("content")}
            if m.get("refusal") is not None:
                delta["refusal"] = m["refusal"]
            if m.get("tool_calls"):
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(m["tool_calls"])]
            parts = [{"index": index, "delta": delta, "finish_reason": None}]
        chunks.append({**head, "choices": parts})
        end: dict[str, Any] = {"index": index, "finish_reason": c.get("finish_reason") or "stop"}
        if text_api:
            end["text"] = ""
        else:
            end["delta"] = {}
        chunks.append({**head, "choices": [end]})
    extra = answer.get("x_gateway")
    if chunks and isinstance(extra, dict) and extra:
        chunks[-1]["x_gateway"] = extra
    return [data_frame(orjson.dumps(chunk)) for chunk in chunks]


def usage_frame_of(answer: dict[str, Any]) -> bytes:
    """The usage-only chunk for an answer a plugin gave (its own usage, else zeros)."""
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    chunk: dict[str, Any] = {
        "id": answer.get("id") or "chatcmpl-plugin",
        "object": "chat.completion.chunk",
        "created": answer.get("created") or 0,
        "model": answer.get("model") or "",
        "choices": [],
        "usage": usage,
    }
    return data_frame(orjson.dumps(chunk))


class HeldStream:
    """An upstream stream read to its end before the client sees it (``post_stream: buffer``): the frames
    to send, the upstream's own usage, and the upstream to close."""

    def __init__(self, frames: list[bytes], upstream: UpstreamStream) -> None:
        self.frames = frames
        self._upstream = upstream
        self.usage: Usage | None = upstream.usage
        self.usage_frame: bytes | None = upstream.usage_frame

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for frame in self.frames:
            yield frame

    async def aclose(self) -> None:
        await self._upstream.aclose()


class AuditedStream:
    """Passes the upstream's frames on untouched, keeping a copy (up to ``limit`` bytes) for the audit
    hooks that run after the stream ended (``post_stream: audit``)."""

    def __init__(self, upstream: UpstreamStream, limit: int) -> None:
        self._upstream = upstream
        self._limit = limit
        self._size = 0
        self.kept: list[bytes] | None = []
        self.complete = False

    @property
    def usage(self) -> Usage | None:
        return self._upstream.usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._upstream.usage = value

    @property
    def usage_frame(self) -> bytes | None:
        return self._upstream.usage_frame

    @usage_frame.setter
    def usage_frame(self, value: bytes | None) -> None:
        self._upstream.usage_frame = value

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for frame in self._upstream:
            if self.kept is not None:
                self._size += len(frame)
                if self._size > self._limit:
                    self.kept = None  # too large to audit; the stream itself is not affected
                else:
                    self.kept.append(frame)
            yield frame
        self.complete = True

    async def aclose(self) -> None:
        await self._upstream.aclose()


__all__ = [
    "AuditedStream",
    "HeldStream",
    "annotate",
    "assemble",
    "frames_of",
    "keep_transport",
    "usage_frame_of",
]
