"""Anthropic Messages ingress: ``POST /v1/messages`` bodies in, OpenAI chat bodies through, and back.

The pipeline speaks OpenAI chat only, so an Anthropic request is translated once on the way in
(``to_openai_request``) and the OpenAI answer once on the way out (``to_anthropic_response``;
streams go through ``gateway.ingress.anthropic_stream.StreamTranslator``). Everything here is
pure: dicts in, dicts out, and errors are ``gateway.errors`` types whose message and ``param``
name the offending field (``messages[1].content[0].type``).

Lossy on purpose, because OpenAI chat has no slot for them:

- ``top_k``, ``thinking``, ``service_tier``, ``cache_control`` and other Anthropic-only request
  fields are dropped, as are ``thinking`` / ``redacted_thinking`` blocks in assistant history
  (they are model-internal and only meaningful to Anthropic itself);
- a ``tool_result`` with ``is_error: true`` becomes a tool message whose text starts ``"Error: "``;
- images inside a ``tool_result`` move to a user message right after the tool messages, since
  OpenAI tool messages carry text only;
- ``stop_sequence`` in answers is always null: OpenAI's ``finish_reason: stop`` does not say
  whether a stop sequence or the model ended the turn.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import BadRequest, UpstreamUnavailable
from gateway.ingress.anthropic_stream import (
    StreamTranslator,
    anthropic_usage,
    fallback_tool_id,
    message_id,
    stop_reason,
    tool_input,
)
from gateway.ingress.extra import plugin_extra
from gateway.providers.base import Usage

__all__ = ["StreamTranslator", "message_id", "to_anthropic_response", "to_openai_request"]

_TOOL_CHOICES: dict[str, str] = {"auto": "auto", "any": "required", "none": "none"}

# Assistant-history blocks that carry nothing OpenAI can take; skipped rather than refused so a
# conversation started against Anthropic itself can continue through the gateway.
_SKIPPED_ASSISTANT_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def _bad(path: str, problem: str) -> BadRequest:
    return BadRequest(f"{path}: {problem}", param=path)


# --------------------------------------------------------------------------------------------
# Request: Anthropic -> OpenAI


def to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """Translate an Anthropic Messages request body into an OpenAI chat-completions body.

    Raises ``BadRequest`` naming the field for anything missing, mistyped or not expressible in
    OpenAI chat (server tools, document blocks, unknown block types).
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "required, must be a non-empty string")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("max_tokens", "required, must be a positive integer")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("messages", "required, must be a non-empty list")

    messages: list[dict[str, Any]] = []
    system = _system_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(raw_messages):
        messages.extend(_message(message, f"messages[{i}]"))

    # max_tokens rather than max_completion_tokens: every OpenAI-compatible server accepts it, and
    # the parse stage reads both for admission.
    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    for name in ("temperature", "top_p"):
        if name in body and body[name] is not None:
            value = body[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _bad(name, "must be a number")
            out[name] = value
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop_sequences", "must be a list of strings")
        if stop:
            out["stop"] = stop
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "must be a boolean")
    if stream:
        # Without include_usage an OpenAI stream carries no token counts, and message_delta needs them.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("metadata", "must be an object")
        user_id = metadata.get("user_id")
        if isinstance(user_id, str) and user_id:
            out["user"] = user_id
    _add_tools(body, out)
    return out


def _system_text(system: object) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise _bad("system", "must be a string or a list of text blocks")
    texts = []
    for i, block in enumerate(system):
        path = f"system[{i}]"
        if _block_type(block, path) != "text":
            raise _bad(f"{path}.type", "only text blocks are allowed in system")
        texts.append(_text(block, path))
    # Separate sections as a human would; OpenAI-compatible servers do not all take part lists here.
    return "\n\n".join(t for t in texts if t)


def _block_type(block: object, path: str) -> str:
    if not isinstance(block, dict):
        raise _bad(path, "must be a content block object")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _bad(f"{path}.type", "required, must be a string")
    return kind


def _text(block: dict[str, Any], path: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{path}.text", "required, must be a string")
    return text


def _message(message: object, path: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        raise _bad(path, "must be an object")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise _bad(f"{path}.role", "must be 'user' or 'assistant'")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(f"{path}.content", "must be a string or a list of content blocks")
    if role == "user":
        return _user_messages(content, path)
    return [_assistant_message(content, path)]


def _user_messages(blocks: list[Any], path: str) -> list[dict[str, Any]]:
    """One user turn: its tool results become ``role: tool`` messages first, then the rest."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        bpath = f"{path}.content[{j}]"
        kind = _block_type(block, bpath)
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, bpath)})
        elif kind == "image":
            parts.append(_image_part(block, bpath))
        elif kind == "tool_result":
            tool_message, images = _tool_result(block, bpath)
            tool_messages.append(tool_message)
            parts.extend(images)
        else:
            raise _bad(f"{bpath}.type", f"unsupported content block type {kind!r} in a user message")
    if not parts and tool_messages:
        return tool_messages
    content: str | list[dict[str, Any]] = parts
    if not parts:
        content = ""
    elif len(parts) == 1 and parts[0]["type"] == "text":
        content = parts[0]["text"]
    return [*tool_messages, {"role": "user", "content": content}]


def _image_part(block: dict[str, Any], path: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{path}.source", "required, must be an object")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not media_type:
            raise _bad(f"{path}.source.media_type", "required, must be a string")
        if not isinstance(data, str) or not data:
            raise _bad(f"{path}.source.data", "required, must be a base64 string")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        raw_url = source.get("url")
        if not isinstance(raw_url, str) or not raw_url:
            raise _bad(f"{path}.source.url", "required, must be a string")
        url = raw_url
    else:
        raise _bad(f"{path}.source.type", f"unsupported image source type {kind!r}; use base64 or url")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict[str, Any], path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ``tool_result`` block as an OpenAI tool message, plus any images it carried."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise _bad(f"{path}.tool_use_id", "required, must be a string")
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if content is None or isinstance(content, str):
        text = content or ""
    elif isinstance(content, list):
        texts = []
        for k, inner in enumerate(content):
            ipath = f"{path}.content[{k}]"
            kind = _block_type(inner, ipath)
            if kind == "text":
                texts.append(_text(inner, ipath))
            elif kind == "image":
                images.append(_image_part(inner, ipath))
            else:
                raise _bad(f"{ipath}.type", f"unsupported content block type {kind!r} in a tool_result")
        text = "\n".join(texts)
    else:
        raise _bad(f"{path}.content", "must be a string or a list of content blocks")
    if block.get("is_error") is True:
        # OpenAI tool messages have no error flag; say it in the text so the model still sees it.
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}, images


def _assistant_message(blocks: list[Any], path: str) -> dict[str, Any]:
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        bpath = f"{path}.content[{j}]"
        kind = _block_type(block, bpath)
        if kind == "text":
            texts.append(_text(block, bpath))
        elif kind == "tool_use":
            tool_calls.append(_tool_call(block, bpath))
        elif kind not in _SKIPPED_ASSISTANT_BLOCKS:
            raise _bad(f"{bpath}.type", f"unsupported content block type {kind!r} in an assistant message")
    # Adjacent text blocks of one answer are one text (Anthropic splits them e.g. around
    # citations), so they join with nothing between them.
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _tool_call(block: dict[str, Any], path: str) -> dict[str, Any]:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{path}.id", "required, must be a string")
    if not isinstance(name, str) or not name:
        raise _bad(f"{path}.name", "required, must be a string")
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise _bad(f"{path}.input", "must be an object")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }


def _add_tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    raw_tools = body.get("tools")
    tools: list[dict[str, Any]] = []
    if raw_tools is not None:
        if not isinstance(raw_tools, list):
            raise _bad("tools", "must be a list")
        tools = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(raw_tools)]
    choice: str | dict[str, Any] | None = None
    parallel = True
    raw_choice = body.get("tool_choice")
    if raw_choice is not None:
        choice, parallel = _tool_choice(raw_choice)
    # OpenAI rejects tool_choice and parallel_tool_calls without tools, Anthropic ignores them.
    if not tools:
        return
    out["tools"] = tools
    if choice is not None:
        out["tool_choice"] = choice
    if not parallel:
        out["parallel_tool_calls"] = False


def _tool(tool: object, path: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise _bad(path, "must be an object")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise _bad(f"{path}.type", f"server tool {kind!r} is not supported through this gateway")
    name, schema, description = tool.get("name"), tool.get("input_schema"), tool.get("description")
    if not isinstance(name, str) or not name:
        raise _bad(f"{path}.name", "required, must be a string")
    if not isinstance(schema, dict):
        raise _bad(f"{path}.input_schema", "required, must be a JSON Schema object")
    function: dict[str, Any] = {"name": name}
    if description is not None:
        if not isinstance(description, str):
            raise _bad(f"{path}.description", "must be a string")
        function["description"] = description
    function["parameters"] = schema
    return {"type": "function", "function": function}


def _tool_choice(raw: object) -> tuple[str | dict[str, Any], bool]:
    """OpenAI's tool_choice and whether parallel tool calls stay allowed."""
    if not isinstance(raw, dict):
        raise _bad("tool_choice", "must be an object")
    kind = raw.get("type")
    parallel = raw.get("disable_parallel_tool_use") is not True
    if kind == "tool":
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("tool_choice.name", "required when type is 'tool'")
        return {"type": "function", "function": {"name": name}}, parallel
    if isinstance(kind, str) and kind in _TOOL_CHOICES:
        return _TOOL_CHOICES[kind], parallel
    raise _bad("tool_choice.type", "must be one of 'auto', 'any', 'tool', 'none'")


# --------------------------------------------------------------------------------------------
# Response: OpenAI -> Anthropic


def to_anthropic_response(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """Translate an OpenAI ``chat.completion`` into an Anthropic ``message``; only choice 0 is used.

    Raises ``UpstreamUnavailable`` when the answer has no choice to translate.
    """
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamUnavailable("upstream answer has no choices")
    choice = choices[0]
    msg_id = message_id(body.get("id"))
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    content: list[dict[str, Any]] = []
    # A refusal is what the model said instead of answering; the app must see it, as text.
    for key in ("content", "refusal"):
        text = message.get(key)
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
    tool_calls = message.get("tool_calls")
    for i, call in enumerate(tool_calls if isinstance(tool_calls, list) else []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        call_id = call.get("id")
        content.append(
            {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else fallback_tool_id(msg_id, i),
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments")),
            }
        )
    has_tool_use = any(block["type"] == "tool_use" for block in content)
    out: dict[str, Any] = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), tool_use=has_tool_use),
        "stop_sequence": None,
        "usage": anthropic_usage(Usage.from_openai(body.get("usage"))),
    }
    extra = plugin_extra(body.get("x_gateway"))
    if extra:  # what a post hook put in the answer (RAG's citations) rides on the message
        out["x_gateway"] = extra
    return out
