"""The OpenAI view of a Messages body the OpenAI form cannot carry whole.

``/v1/messages`` bodies may hold what OpenAI chat has no slot for and ``to_openai_request`` refuses:
``document`` and ``search_result`` blocks, server tools (``web_search_20250305``…) and their results in
assistant history, images from the Files API. Such a request can still be served natively by an
``anthropic`` deployment, while routing, admission, hooks and the cache read its OpenAI view. So the
view is made from a copy where each such block becomes a text block carrying its text (a plain-text
document's content, a tool result's JSON) or nothing, and server tools are left out: close enough to
estimate the prompt for the budget reservation, and to show hooks the conversation. The original is
what goes upstream; an OpenAI-form deployment is skipped for it (``NativeRequest.untranslatable``).

Known gap: a base64 or URL ``document`` (a PDF) has no text here, so the reservation does not count it;
the upstream's usage is what is billed, and any excess over the reservation is counted in
``gateway_budget_overrun_usd_total`` like any other.
"""

from __future__ import annotations

from typing import Any

import orjson

_USER_BLOCKS = frozenset({"text", "image", "tool_result"})
_ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
_RESULT_BLOCKS = frozenset({"text", "image"})
_IMAGE_SOURCES = frozenset({"base64", "url"})


def translatable(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``body`` with what OpenAI chat cannot express replaced by text, and whether anything was."""
    out = body
    system = body.get("system")
    if isinstance(system, list) and any(_kind(b) not in ("text", None) for b in system):
        out = {**out, "system": [b for b in system if _kind(b) in ("text", None)]}
    messages = body.get("messages")
    if isinstance(messages, list):
        changed = [_message(m) for m in messages]
        if any(new is not old for new, old in zip(changed, messages, strict=True)):
            out = {**out, "messages": changed}
    tools = body.get("tools")
    if isinstance(tools, list) and any(_server_tool(t) for t in tools):
        out = {**out, "tools": [t for t in tools if not _server_tool(t)]}
    return out, out is not body


def _kind(block: object) -> object:
    return block.get("type") if isinstance(block, dict) else None


def _server_tool(tool: object) -> bool:
    return isinstance(tool, dict) and tool.get("type") not in (None, "custom")


def _message(message: object) -> object:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    allowed = _ASSISTANT_BLOCKS if message.get("role") == "assistant" else _USER_BLOCKS
    blocks: list[Any] = message["content"]
    kept = [_block(b, allowed) for b in blocks]
    if all(new is old for new, old in zip(kept, blocks, strict=True)):
        return message
    return {**message, "content": [b for b in kept if b is not None]}


def _block(block: object, allowed: frozenset[str]) -> object:
    kind = _kind(block)
    if not isinstance(block, dict) or not isinstance(kind, str):
        return block  # malformed: the translation names it
    if kind == "image" and _source_type(block) not in _IMAGE_SOURCES:
        return None  # a Files API image: nothing the OpenAI form can point at
    if kind == "tool_result" and isinstance(block.get("content"), list):
        inner: list[Any] = block["content"]
        kept = [_block(b, _RESULT_BLOCKS) for b in inner]
        if any(new is not old for new, old in zip(kept, inner, strict=True)):
            return {**block, "content": [b for b in kept if b is not None]}
        return block
    if kind in allowed:
        return block
    text = _text_of(block)
    return {"type": "text", "text": text} if text else None


def _source_type(block: dict[str, Any]) -> object:
    source = block.get("source")
    return source.get("type") if isinstance(source, dict) else None


def _text_of(block: dict[str, Any]) -> str:
    """The text a block puts before the model, as far as the gateway can see it."""
    if block.get("type") == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
            return str(source["data"])
        if isinstance(source, dict) and isinstance(source.get("content"), list):
            return "\n".join(str(b.get("text") or "") for b in source["content"] if isinstance(b, dict))
        return ""
    # server tool uses and results, search results, …: their JSON is the closest count at hand
    return orjson.dumps({k: v for k, v in block.items() if k != "cache_control"}).decode()
