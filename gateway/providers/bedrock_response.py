"""Bedrock Converse → OpenAI: answers, usage, ConverseStream events and errors (pure, no I/O).

Errors follow the Bedrock Runtime API reference: an HTTP error names its exception in the
``x-amzn-errortype`` header (``ThrottlingException:http://internal.amazon.com/...``) with a
``{"message": ...}`` body; inside a ConverseStream an exception arrives as an event whose
``:message-type`` header is ``exception`` and whose ``:exception-type`` names it.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import UpstreamStatusError, UpstreamUnavailable
from gateway.providers.base import Usage, token_count
from gateway.providers.bedrock_translate import JSON_TOOL
from gateway.providers.http import retry_after_of
from gateway.sse import data_frame

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# Exception name (HTTP ``x-amzn-errortype`` or a stream's ``:exception-type``, any case) → the status
# the gateway works with. Bedrock's own statuses, except ModelErrorException/ModelStreamErrorException
# (424, "retry your request"): a failed model run is the upstream's fault, so a retryable 502.
_EXCEPTION_STATUS = {
    "throttlingexception": 429,
    "modelnotreadyexception": 429,
    "servicequotaexceededexception": 429,
    "validationexception": 400,
    "accessdeniedexception": 403,
    "resourcenotfoundexception": 404,
    "modeltimeoutexception": 408,
    "modelerrorexception": 502,
    "modelstreamerrorexception": 502,
    "internalserverexception": 500,
    "serviceunavailableexception": 503,
}
_TOO_LONG = re.compile(r"too long|too many (input )?tokens|context (length|window)", re.IGNORECASE)


def finish_reason(stop_reason: Any) -> str:
    """A Converse ``stopReason`` as OpenAI's ``finish_reason`` (unknown reasons read as ``stop``)."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def usage_from_converse(raw: Any) -> Usage:
    """Converse ``usage`` → ``Usage``. ``inputTokens`` counts only the uncached part of the prompt, as
    Anthropic's does, so ``prompt_tokens`` adds the cache reads and writes back in. A count that is no
    integer reads as 0 and marks the usage ``malformed`` (vetted before pricing)."""
    counts = raw if isinstance(raw, Mapping) else {}
    fresh, read, write, output = (
        token_count(counts.get(k))
        for k in ("inputTokens", "cacheReadInputTokens", "cacheWriteInputTokens", "outputTokens")
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


def completion_id() -> str:
    """Converse answers carry no id of their own; the client still needs one per completion."""
    return "chatcmpl-" + uuid.uuid4().hex


def to_openai_response(
    answer: Mapping[str, Any], *, model: str, json_forced: bool = False, created: int | None = None
) -> tuple[dict[str, Any], Usage]:
    """A Converse answer as an OpenAI ``chat.completion`` and its ``Usage``.

    Text blocks are joined into ``content``; ``toolUse`` blocks become ``tool_calls`` (arguments as a
    JSON string), except the ``JSON_TOOL`` call of a forced JSON answer, whose input is the content.
    Reasoning and citation blocks have no OpenAI counterpart and are left out. Raises
    ``UpstreamUnavailable`` when ``output.message.content`` is not a list.
    """
    output = answer.get("output")
    message = output.get("message") if isinstance(output, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    if not isinstance(content, list):
        raise UpstreamUnavailable("malformed upstream body: no output.message.content")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    stop_reason = answer.get("stopReason")
    for block in content:
        if not isinstance(block, Mapping):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        use = block.get("toolUse")
        if not isinstance(use, Mapping):
            continue
        arguments = orjson.dumps(use.get("input") or {}).decode()
        if json_forced and use.get("name") == JSON_TOOL:
            texts, stop_reason = [arguments], "end_turn"  # the answer itself, not a call to make
            continue
        call = {"name": use.get("name"), "arguments": arguments}
        calls.append({"id": use.get("toolUseId"), "type": "function", "function": call})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    reply["refusal"] = None
    if calls:
        reply["tool_calls"] = calls
    usage = usage_from_converse(answer.get("usage"))
    choice = {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish_reason(stop_reason)}
    completion = {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [choice],
        "usage": usage.to_openai(),
    }
    return completion, usage


# --- streams ----------------------------------------------------------------------------------------


class StreamTranslator:
    """ConverseStream events in (event type, JSON payload), OpenAI ``chat.completion.chunk`` SSE frames
    out. Pure: state only.

    Converse numbers content blocks across text, reasoning and toolUse; OpenAI numbers only tool calls,
    so ``toolUse`` blocks are renumbered 0..k in arrival order. Under a forced JSON answer the
    ``JSON_TOOL`` block's input deltas are the content. ``messageStop`` gives the finish chunk and
    ``finished``; ``metadata`` (after it) gives ``usage`` and ``usage_frame`` (never returned by
    ``feed``: the core decides whether the client asked for it) and ``done``.
    """

    def __init__(self, *, model: str, created: int, json_forced: bool = False) -> None:
        self.model = model
        self.created = created
        self.json_forced = json_forced
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None
        self.finished = False
        self.done = False
        self._id = completion_id()
        self._started = False
        self._tool_index: dict[int, int] = {}  # Converse block index -> OpenAI tool_calls index
        self._json_blocks: set[int] = set()

    def feed(self, kind: str, payload: Mapping[str, Any]) -> list[bytes]:
        """Translate one event (exceptions are raised by the caller from the frame's headers)."""
        if kind == "messageStart":
            self._started = True
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind not in ("contentBlockStart", "contentBlockDelta", "messageStop", "metadata"):
            return []  # contentBlockStop, and event types added after this was written
        if not self._started:
            raise UpstreamUnavailable("malformed upstream stream: no messageStart")
        if kind == "contentBlockStart":
            return self._block_start(payload.get("contentBlockIndex"), payload.get("start"))
        if kind == "contentBlockDelta":
            return self._block_delta(payload.get("contentBlockIndex"), payload.get("delta"))
        if kind == "messageStop":
            self.finished = True
            stop_reason = payload.get("stopReason")
            if self._json_blocks and stop_reason == "tool_use":
                stop_reason = "end_turn"
            return [self._chunk({}, finish_reason(stop_reason))]
        self.usage = usage_from_converse(payload.get("usage"))
        envelope = {**self._envelope(), "choices": [], "usage": self.usage.to_openai()}
        self.usage_frame = data_frame(orjson.dumps(envelope))
        self.done = True
        return []

    def _block_start(self, index: Any, start: Any) -> list[bytes]:
        use = start.get("toolUse") if isinstance(start, Mapping) else None
        if not isinstance(use, Mapping) or not isinstance(index, int):
            return []
        if self.json_forced and use.get("name") == JSON_TOOL:
            self._json_blocks.add(index)
            return []
        k = self._tool_index[index] = len(self._tool_index)
        function = {"name": use.get("name"), "arguments": ""}
        call = {"index": k, "id": use.get("toolUseId"), "type": "function", "function": function}
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, index: Any, delta: Any) -> list[bytes]:
        if not isinstance(delta, Mapping):
            return []
        text = delta.get("text")
        if isinstance(text, str) and text:
            return [self._chunk({"content": text})]
        use = delta.get("toolUse")
        piece = use.get("input") if isinstance(use, Mapping) else None
        if not isinstance(piece, str) or not piece or not isinstance(index, int):
            return []  # reasoning and citation deltas have no OpenAI counterpart
        if index in self._json_blocks:
            return [self._chunk({"content": piece})]
        k = self._tool_index.get(index)
        if k is None:
            return []
        return [self._chunk({"tool_calls": [{"index": k, "function": {"arguments": piece}}]})]

    def _envelope(self) -> dict[str, Any]:
        created, model = self.created, self.model
        return {"id": self._id, "object": "chat.completion.chunk", "created": created, "model": model}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return data_frame(orjson.dumps({**self._envelope(), "choices": [choice], "usage": None}))


# --- errors -----------------------------------------------------------------------------------------


def exception_error(
    name: str, message: str | None, *, status: int | None = None, retry_after: str | None = None
) -> UpstreamStatusError:
    """A Bedrock exception, by name, as the gateway's error: its status (``status`` for an unknown
    name, else 500), OpenAI's type for it, the exception name as ``code`` (``context_length_exceeded``
    for a prompt too long, so dispatch may fall back to a larger model)."""
    mapped = _EXCEPTION_STATUS.get(name.lower())
    status_code = mapped if mapped is not None else (status or 500)
    kind = "server_error" if status_code >= 500 else "invalid_request_error"
    error_code: str | None = name or None
    if status_code == 429:
        kind = "rate_limit_error"
    elif status_code == 403:
        kind = "permission_error"
    elif status_code == 400 and message and _TOO_LONG.search(message):
        error_code = "context_length_exceeded"
    text = message or f"upstream answered {name or 'an error'}"
    return UpstreamStatusError(status_code, text, type=kind, code=error_code, retry_after=retry_after)


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamStatusError:
    """A non-2xx Bedrock answer as ``UpstreamStatusError``: the exception named by
    ``x-amzn-errortype`` (or the body's ``__type``), the body's ``message`` kept."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    data = parsed if isinstance(parsed, dict) else {}
    raw_type = headers.get("x-amzn-errortype") or data.get("__type") or ""
    name = str(raw_type).split(":", 1)[0].rsplit("#", 1)[-1]
    message = data.get("message") or data.get("Message")
    if not isinstance(message, str) or not message:
        text = body.decode("utf-8", "replace").strip()
        message = text[:500] if text and parsed is None else f"upstream answered HTTP {status}"
    return exception_error(name, message, status=status, retry_after=retry_after_of(headers))
