"""OpenAI chat-completion chunks in, Anthropic Messages stream events out; plus shared answer helpers.

``StreamTranslator`` is pure: it is fed one parsed OpenAI chunk at a time and returns complete
Anthropic SSE frames (``event: <name>\\ndata: <json>\\n\\n``). Its state is explicit: which content
block is open, which OpenAI tool-call index owns which Anthropic block, the finish reason and
the usage seen so far. The HTTP handler owns I/O and errors.

Event order: ``message_start`` → (``content_block_start`` → ``content_block_delta``* →
``content_block_stop``)* → ``message_delta`` → ``message_stop``. Known limits, because an OpenAI
stream reveals less, later, than Anthropic's:

- ``message_start`` carries ``input_tokens: 0``: the counts arrive in OpenAI's last chunk, so the
  real ones go in ``message_delta.usage`` (cumulative, as Anthropic's SDK reads them).
- An upstream that interleaves fragments of parallel tool calls (OpenAI itself sends them one
  after another) gets a late fragment emitted as a delta on its already-stopped block: a block
  cannot be reopened, and Anthropic's SDK accumulates deltas by block index, so the final
  message is still right.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import anthropic_error_type
from gateway.ingress.extra import plugin_extra
from gateway.providers.base import Usage
from gateway.sse import named_frame

# OpenAI finish_reason -> Anthropic stop_reason. ``function_call`` is the legacy name of tool_calls.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def message_id(openai_id: object = None) -> str:
    """An Anthropic message id derived from an OpenAI completion id (random when there is none)."""
    if isinstance(openai_id, str) and openai_id:
        return "msg_" + openai_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


def fallback_tool_id(msg_id: str, index: int) -> str:
    """A tool_use id for an upstream that sent none; unique per message so tool_results match."""
    return f"toolu_{msg_id.removeprefix('msg_')}_{index}"


def stop_reason(finish_reason: object, *, tool_use: bool) -> str:
    """Anthropic's stop_reason for an OpenAI finish_reason.

    Some OpenAI-compatible servers answer tool calls with ``finish_reason: stop``; agent loops
    key on ``stop_reason == "tool_use"``, so tool calls win over a plain stop.
    """
    reason = _STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"
    if tool_use and reason == "end_turn":
        return "tool_use"
    return reason


def anthropic_usage(usage: Usage | None) -> dict[str, int]:
    """Anthropic usage counts: ``input_tokens`` is only the uncached part of OpenAI's prompt."""
    if usage is None:
        usage = Usage()
    return {
        "input_tokens": max(usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens, 0),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def tool_input(arguments: object) -> dict[str, Any]:
    """A tool_use ``input`` from OpenAI's JSON-string arguments.

    Anthropic needs an object. Arguments that are not a JSON object (a model can emit broken
    JSON) are kept verbatim under ``_raw_arguments`` rather than dropped, so the app sees what
    the model produced instead of silently calling the tool with no arguments.
    """
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str | bytes) else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    return {"_raw_arguments": arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()}


def _frame(payload: dict[str, Any]) -> bytes:
    # Anthropic repeats the event name as the payload's ``type``; the SDK drops data without it.
    return named_frame(payload["type"], orjson.dumps(payload))


@dataclass(slots=True)
class _PendingTool:
    """A tool call whose first deltas came without a name: held until the name arrives."""

    id: str = ""
    arguments: str = ""


class StreamTranslator:
    """Translate one OpenAI chat-completion stream into Anthropic Messages stream events.

    Feed every parsed chunk, including the usage-only one (``choices: []``; when the upstream
    stream keeps it aside, feed ``{"choices": [], "usage": usage.to_openai()}``), then call
    ``finish``. After ``finish`` both methods return nothing.
    """

    __slots__ = (
        "_blocks",
        "_finish_reason",
        "_finished",
        "_message_id",
        "_model",
        "_open",
        "_open_is_text",
        "_pending",
        "_started",
        "_tools",
        "extra",
        "usage",
    )

    def __init__(self, *, model: str, message_id: str) -> None:
        self._model = model
        self._message_id = message_id
        self._started = False
        self._finished = False
        self._blocks = 0
        """Anthropic content blocks opened so far (the next block's index)."""
        self._open: int | None = None
        self._open_is_text = False
        self._tools: dict[int, int] = {}
        """OpenAI ``tool_calls[].index`` → Anthropic content-block index."""
        self._pending: dict[int, _PendingTool] = {}
        self._finish_reason: str | None = None
        self.usage: Usage | None = None
        """The upstream's token counts, once its usage chunk was fed."""
        self.extra: dict[str, Any] | None = None
        """What plugins put in the answer's ``x_gateway`` (RAG's citations); sent on ``message_delta``."""

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """Translate one OpenAI ``chat.completion.chunk``; the first call also emits message_start."""
        if self._finished:
            return []
        frames = self._start()
        usage = Usage.from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        if "x_gateway" in chunk and (extra := plugin_extra(chunk["x_gateway"])) is not None:
            self.extra = {**(self.extra or {}), **extra}
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            # Anthropic has one answer per message: only choice 0 is translated.
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                frames.extend(self._choice(choice))
        return frames

    def finish(self) -> list[bytes]:
        """Close any open block and end the message (message_delta, message_stop)."""
        if self._finished:
            return []
        frames = self._start()
        for index, pending in list(self._pending.items()):
            # The name never came; emit the call anyway so its arguments are not lost.
            frames.extend(self._start_tool(index, pending.id, "", pending.arguments))
        self._pending.clear()
        frames.extend(self._close())
        self._finished = True
        usage = anthropic_usage(self.usage) if self.usage is not None else {"output_tokens": 0}
        reason = stop_reason(self._finish_reason, tool_use=bool(self._tools))
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": usage,
        }
        if self.extra:
            # An extra top-level field: Anthropic's SDK keeps it on the event (``model_extra``).
            delta["x_gateway"] = self.extra
        frames.append(_frame(delta))
        frames.append(_frame({"type": "message_stop"}))
        return frames

    @staticmethod
    def error_frame(message: str, status: int) -> bytes:
        """The ``error`` event that ends a stream which failed after its first byte."""
        error = {"type": anthropic_error_type(status), "message": message}
        return _frame({"type": "error", "error": error})

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [_frame({"type": "message_start", "message": message})]

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        delta = choice.get("delta")
        if isinstance(delta, dict):
            # A refusal is what the model said instead of answering: the app must see it as text.
            for key in ("content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    frames.extend(self._text(text))
            tool_calls = delta.get("tool_calls")
            for call in tool_calls if isinstance(tool_calls, list) else []:
                if isinstance(call, dict):
                    frames.extend(self._tool_delta(call))
        finish_reason = choice.get("finish_reason")
        if isinstance(finish_reason, str):
            self._finish_reason = finish_reason
            # Close now rather than at finish(): the client sees content_block_stop without
            # waiting for the usage chunk.
            frames.extend(self._close())
        return frames

    def _text(self, text: str) -> list[bytes]:
        frames: list[bytes] = []
        index = self._open
        if index is None or not self._open_is_text:
            frames.extend(self._close())
            frames.append(self._open_block({"type": "text", "text": ""}, is_text=True))
            index = self._blocks - 1
        frames.append(self._delta(index, {"type": "text_delta", "text": text}))
        return frames

    def _tool_delta(self, call: dict[str, Any]) -> list[bytes]:
        raw_index = call.get("index")
        index = raw_index if isinstance(raw_index, int) else 0
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        name, arguments = function.get("name"), function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else ""
        block = self._tools.get(index)
        if block is not None:
            if not arguments:
                return []
            return [self._delta(block, {"type": "input_json_delta", "partial_json": arguments})]
        pending = self._pending.setdefault(index, _PendingTool())
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            pending.id = call_id
        pending.arguments += arguments
        if not isinstance(name, str) or not name:
            return []
        del self._pending[index]
        return self._start_tool(index, pending.id, name, pending.arguments)

    def _start_tool(self, index: int, call_id: str, name: str, arguments: str) -> list[bytes]:
        frames = self._close()
        block = {
            "type": "tool_use",
            "id": call_id or fallback_tool_id(self._message_id, index),
            "name": name,
            "input": {},
        }
        frames.append(self._open_block(block, is_text=False))
        self._tools[index] = self._blocks - 1
        # Empty fragments are skipped: the SDK's partial-JSON parser gains nothing from them.
        if arguments:
            frames.append(
                self._delta(self._blocks - 1, {"type": "input_json_delta", "partial_json": arguments})
            )
        return frames

    def _open_block(self, content_block: dict[str, Any], *, is_text: bool) -> bytes:
        index = self._blocks
        self._blocks += 1
        self._open, self._open_is_text = index, is_text
        return _frame({"type": "content_block_start", "index": index, "content_block": content_block})

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return _frame({"type": "content_block_delta", "index": index, "delta": delta})

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [_frame({"type": "content_block_stop", "index": index})]
