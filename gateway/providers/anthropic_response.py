"""Anthropic → OpenAI: responses, usage, streaming events and errors (pure, no I/O)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import UpstreamStatusError, UpstreamUnavailable
from gateway.providers.base import Usage, token_count
from gateway.sse import Event, data_frame

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: Any) -> str:
    """Map an Anthropic ``stop_reason`` to OpenAI's ``finish_reason`` (unknown reasons read as ``stop``)."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def usage_from_anthropic(raw: Any) -> Usage:
    """Anthropic usage → ``Usage``: ``prompt_tokens`` adds the cached and cache-write parts back in.
    A count that is no integer reads as 0 and marks the usage ``malformed`` (vetted before pricing)."""
    counts = raw if isinstance(raw, Mapping) else {}
    fresh, read, write, output = (
        token_count(counts.get(k)) for k in ("input_tokens", *_CACHE_KEYS, "output_tokens")
    )
    malformed = None in (fresh, read, write, output)
    fresh, read, write, output = fresh or 0, read or 0, write or 0, output or 0
    return Usage(
        prompt_tokens=fresh + read + write,
        completion_tokens=output,
        cached_tokens=read,
        cache_write_tokens=write,
        malformed=malformed,
    )


_CACHE_KEYS = ("cache_read_input_tokens", "cache_creation_input_tokens")


def _completion_id(message_id: Any) -> str:
    suffix = message_id.removeprefix("msg_") if isinstance(message_id, str) and message_id else "anthropic"
    return "chatcmpl-" + suffix


def to_openai_response(
    msg: Mapping[str, Any], *, model: str, created: int | None = None
) -> tuple[dict[str, Any], Usage]:
    """Translate an Anthropic message into an OpenAI ``chat.completion`` object and its ``Usage``.

    Text blocks are joined into ``content`` (``None`` when there are none); ``tool_use`` blocks become
    ``tool_calls`` with JSON-string arguments; thinking and server-tool blocks have no OpenAI counterpart
    and are left out. Raises ``UpstreamUnavailable`` when ``content`` is not a list.
    """
    content = msg.get("content")
    if not isinstance(content, list):
        raise UpstreamUnavailable("malformed upstream body")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            call = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": call})
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    usage = usage_from_anthropic(msg.get("usage"))
    completion = {
        "id": _completion_id(msg.get("id")),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(msg.get("stop_reason")),
            }
        ],
        "usage": usage.to_openai(),
    }
    return completion, usage


# --- streams ----------------------------------------------------------------------------------------


class StreamTranslator:
    """Anthropic stream events in, OpenAI ``chat.completion.chunk`` SSE frames out. Pure: state only.

    Anthropic numbers content blocks across text, thinking and tool_use; OpenAI numbers only tool calls, so
    ``tool_use`` blocks are renumbered 0..k in arrival order. Thinking blocks are skipped. After
    ``message_delta`` the final counts are in ``usage`` and the usage-only chunk in ``usage_frame`` (never
    returned by ``feed``: the core decides whether the client asked for it); ``done`` turns true on
    ``message_stop``.
    """

    def __init__(self, *, model: str, created: int) -> None:
        self.model = model
        self.created = created
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None
        self.done = False
        self._id: str | None = None
        self._start_usage: dict[str, Any] = {}
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index

    def feed(self, event: Event) -> list[bytes]:
        """Translate one event; raise ``UpstreamStatusError`` on an ``error`` event."""
        try:
            data = orjson.loads(event.data) if event.data else {}
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable("malformed upstream stream event") from None
        if not isinstance(data, dict):
            raise UpstreamUnavailable("malformed upstream stream event")
        kind = data.get("type") or event.event
        if kind == "error":
            raise stream_error(data.get("error"))
        if kind == "message_start":
            return self._message_start(data.get("message"))
        if kind not in ("content_block_start", "content_block_delta", "message_delta", "message_stop"):
            return []  # ping, content_block_stop, and event types added after this was written
        if self._id is None:
            raise UpstreamUnavailable("malformed upstream stream: no message_start")
        if kind == "content_block_start":
            return self._block_start(data.get("index"), data.get("content_block"))
        if kind == "content_block_delta":
            return self._block_delta(data.get("index"), data.get("delta"))
        if kind == "message_delta":
            return self._message_delta(data)
        self.done = True
        return []

    def _message_start(self, message: Any) -> list[bytes]:
        if not isinstance(message, dict):
            raise UpstreamUnavailable("malformed upstream stream: message_start without a message")
        self._id = _completion_id(message.get("id"))
        usage = message.get("usage")
        self._start_usage = dict(usage) if isinstance(usage, dict) else {}
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, index: Any, block: Any) -> list[bytes]:
        if not isinstance(block, dict):
            return []
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use" or not isinstance(index, int):
            return []  # thinking and server-tool blocks have no OpenAI counterpart
        k = self._tool_index[index] = len(self._tool_index)
        function = {"name": block.get("name"), "arguments": ""}
        call = {"index": k, "id": block.get("id"), "type": "function", "function": function}
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, index: Any, delta: Any) -> list[bytes]:
        if not isinstance(delta, dict):
            return []
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        k = self._tool_index.get(index) if isinstance(index, int) else None
        if delta.get("type") == "input_json_delta" and delta.get("partial_json") and k is not None:
            call = {"index": k, "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking, signature and citation deltas have no OpenAI counterpart

    def _message_delta(self, data: dict[str, Any]) -> list[bytes]:
        delta = data.get("delta")
        stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        # message_delta counts are cumulative and win; input/cache counts may be absent there.
        counts = dict(self._start_usage)
        final = data.get("usage")
        if isinstance(final, dict):
            counts.update((k, v) for k, v in final.items() if v is not None)
        self.usage = usage_from_anthropic(counts)
        self.usage_frame = data_frame(
            orjson.dumps({**self._envelope(), "choices": [], "usage": self.usage.to_openai()})
        )
        return [self._chunk({}, finish_reason(stop_reason))]

    def _envelope(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return data_frame(orjson.dumps({**self._envelope(), "choices": [choice], "usage": None}))


def stream_error(error: Any) -> UpstreamStatusError:
    err = error if isinstance(error, dict) else {}
    kind = err.get("type") if isinstance(err.get("type"), str) else None
    message = err.get("message") if isinstance(err.get("message"), str) else None
    status = 529 if kind == "overloaded_error" else 500
    return UpstreamStatusError(status, message or "upstream stream failed", code=kind)


# --- errors -----------------------------------------------------------------------------------------


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamStatusError:
    """An Anthropic non-2xx answer as ``UpstreamStatusError``: upstream status and message kept.

    The Anthropic error type (``overloaded_error``…) travels as ``code``; ``type`` is OpenAI's vocabulary.
    A body that is not Anthropic's envelope is quoted, truncated, as the message.
    """
    error = _error_object(body)
    message = error.get("message")
    if not isinstance(message, str) or not message:
        text = body.decode("utf-8", "replace").strip()
        message = text[:500] if text else f"upstream answered HTTP {status}"
    kind = error.get("type")
    openai_type = "server_error" if status >= 500 else "invalid_request_error"
    if status == 429:
        openai_type = "rate_limit_error"
    retry_after = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    err = UpstreamStatusError(
        status,
        message,
        type=openai_type,
        code=kind if isinstance(kind, str) else None,
        retry_after=retry_after,
    )
    if error and isinstance(kind, str):  # Anthropic's own envelope: an Anthropic client may get it as is
        err.native = ("anthropic", body)
    return err


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}  # not JSON: the caller quotes the raw text instead
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}
