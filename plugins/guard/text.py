"""Walking the texts of a chat-completions request or answer, to read or rewrite them in place.

Text lives in a message's ``content`` (a string, or a list of parts whose ``text`` parts carry it), in an
assistant's ``refusal`` and in its tool calls' ``arguments`` (a JSON string: placeholders are plain
``[A-Z0-9_]`` so rewriting inside it keeps it valid JSON). Images and audio parts are left as they are.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from plugins.sdk.protocol import JSONObject

Rewrite = Callable[[str], str]


def message_texts(message: Any) -> Iterator[str]:
    """Every text of one message."""
    if not isinstance(message, dict):
        return
    content = message.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]
    if isinstance(message.get("refusal"), str):
        yield message["refusal"]
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            yield function["arguments"]


def rewrite_message(message: Any, rewrite: Rewrite) -> Any:
    """A copy of ``message`` with every text passed through ``rewrite``; other fields untouched."""
    if not isinstance(message, dict):
        return message
    out = copy.deepcopy(message)
    content = out.get("content")
    if isinstance(content, str):
        out["content"] = rewrite(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part["text"] = rewrite(part["text"])
    if isinstance(out.get("refusal"), str):
        out["refusal"] = rewrite(out["refusal"])
    for call in out.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            function["arguments"] = rewrite(function["arguments"])
    return out


def rewrite_request(request: JSONObject, rewrite: Rewrite) -> JSONObject:
    """The request with every message's texts rewritten (every role: an earlier assistant turn can
    quote what the user said)."""
    messages = request.get("messages")
    if not isinstance(messages, list):
        return request
    return {**request, "messages": [rewrite_message(m, rewrite) for m in messages]}


def rewrite_response(response: JSONObject, rewrite: Rewrite) -> JSONObject:
    """The ``chat.completion`` with every choice's message texts rewritten."""
    choices = response.get("choices")
    if not isinstance(choices, list):
        return response
    out = []
    for choice in choices:
        if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
            choice = {**choice, "message": rewrite_message(choice["message"], rewrite)}
        out.append(choice)
    return {**response, "choices": out}
