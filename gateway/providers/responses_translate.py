"""Chat completions ↔ an upstream's native Responses API (``type: openai_responses``): pure functions.

The pipeline speaks chat; a deployment whose server has a Responses API (OpenAI's own, newer
OpenAI-compatible servers) is reached by translating the chat body to a Responses request and the
answer (JSON, or the event stream chunk by chunk) back to chat. ``store: false`` is always sent: the
gateway owns stored conversations, so they can move between providers.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers.base import RESPONSES_EXTRA, Usage

# Chat fields with the same name and meaning in a Responses request.
_SAME = (
    "model", "temperature", "top_p", "user", "parallel_tool_calls", "metadata", "stream",
    "service_tier", "prompt_cache_key", "safety_identifier",
)  # fmt: skip


def to_responses_request(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: body[k] for k in _SAME if body.get(k) is not None}
    out["store"] = False
    out["input"] = [item for m in body.get("messages") or [] if isinstance(m, dict) for item in _items(m)]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        out["max_output_tokens"] = limit
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        out["tools"] = [
            _tool(t["function"]) for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            out["tool_choice"] = {"type": "function", "name": choice["function"].get("name")}
        elif isinstance(choice, str):
            out["tool_choice"] = choice
    fmt = body.get("response_format")
    if (
        isinstance(fmt, dict)
        and fmt.get("type") == "json_schema"
        and isinstance(fmt.get("json_schema"), dict)
    ):
        out["text"] = {"format": {"type": "json_schema", **fmt["json_schema"]}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["text"] = {"format": {"type": "json_object"}}
    extra = body.get(RESPONSES_EXTRA)
    if isinstance(extra, dict):  # what a /v1/responses client sent that chat has no slot for
        out.update((k, v) for k, v in extra.items() if k not in out)
    return out


def _tool(function: dict[str, Any]) -> dict[str, Any]:
    tool = {"type": "function", "name": function.get("name"), "parameters": function.get("parameters") or {}}
    if function.get("description") is not None:
        tool["description"] = function["description"]
    tool["strict"] = function.get("strict") is True
    return tool


def _items(message: dict[str, Any]) -> list[dict[str, Any]]:
    role, content = message.get("role"), message.get("content")
    if role == "tool":
        return [
            {"type": "function_call_output", "call_id": message.get("tool_call_id"), "output": _text(content)}
        ]
    items: list[dict[str, Any]] = []
    if role == "assistant":
        text = _text(content)
        if text:
            # an easy input message: an output-message item would need the upstream's own id and status
            items.append({"type": "message", "role": "assistant", "content": text})
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.get("id"),
                    "name": fn.get("name"),
                    "arguments": fn.get("arguments") or "",
                }
            )
        return items
    if isinstance(content, list):
        parts = [_input_part(p) for p in content if isinstance(p, dict)]
    else:
        parts = [{"type": "input_text", "text": _text(content)}]
    return [{"type": "message", "role": role, "content": parts}]


def _input_part(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") == "image_url":
        image = part.get("image_url") or {}
        out = {"type": "input_image", "image_url": image.get("url"), "detail": image.get("detail", "auto")}
        return out
    return {"type": "input_text", "text": str(part.get("text", ""))}


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def chat_usage(usage: object) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": usage.get("total_tokens"),
    }
    details = usage.get("input_tokens_details")
    if isinstance(details, dict):
        out["prompt_tokens_details"] = {"cached_tokens": details.get("cached_tokens", 0)}
    details = usage.get("output_tokens_details")
    if isinstance(details, dict):
        out["completion_tokens_details"] = {"reasoning_tokens": details.get("reasoning_tokens", 0)}
    return out


def finish_reason(response: dict[str, Any], tool_calls: bool) -> str:
    if response.get("status") == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if tool_calls else "stop"


def to_chat_answer(response: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    """A Response object as a ``chat.completion`` and its usage."""
    texts: list[str] = []
    refusal: str | None = None
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text", "")))
                elif isinstance(part, dict) and part.get("type") == "refusal":
                    refusal = str(part.get("refusal", ""))
        elif item.get("type") == "function_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None, "refusal": refusal}
    if calls:
        message["tool_calls"] = calls
    usage = chat_usage(response.get("usage"))
    answer = {
        "id": "chatcmpl-" + str(response.get("id", "")).removeprefix("resp_"),
        "object": "chat.completion",
        "created": int(response.get("created_at") or 0),
        "model": response.get("model") or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason(response, bool(calls)),
                "logprobs": None,
            }
        ],
        "usage": usage,
    }
    return answer, Usage.from_openai(usage)


class ChunkTranslator:
    """Responses stream events → chat chunks, one event at a time; state explicit."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = "chatcmpl-stream"
        self._calls: dict[int, int] = {}  # output_index → tool call index
        self.usage: dict[str, Any] | None = None
        self.done = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return orjson.dumps(chunk)

    def feed(self, event: dict[str, Any]) -> list[bytes]:
        """Chat chunk payloads (JSON, no framing) for one event."""
        kind = event.get("type")
        if kind == "response.created":
            response = event.get("response") or {}
            self.id = "chatcmpl-" + str(response.get("id", "")).removeprefix("resp_")
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "response.output_text.delta":
            return [self._chunk({"content": event.get("delta", "")})]
        if kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") != "function_call":
                return []
            index = len(self._calls)
            self._calls[int(event.get("output_index", 0))] = index
            call = {
                "index": index,
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if kind == "response.function_call_arguments.delta":
            index = self._calls.get(int(event.get("output_index", 0)), 0)
            return [
                self._chunk(
                    {"tool_calls": [{"index": index, "function": {"arguments": event.get("delta", "")}}]}
                )
            ]
        if kind in ("response.completed", "response.incomplete"):
            response = event.get("response") or {}
            self.usage = chat_usage(response.get("usage"))
            self.done = True
            return [self._chunk({}, finish_reason(response, bool(self._calls)))]
        return []

    def usage_chunk(self) -> bytes | None:
        if self.usage is None:
            return None
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": [],
            "usage": self.usage,
        }
        return orjson.dumps(chunk)
