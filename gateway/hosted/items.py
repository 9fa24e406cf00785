"""OpenAI's MCP output items (``mcp_list_tools``, ``mcp_call``, ``mcp_approval_request``) and how a
stored one reads back as chat history; plus the function name a tool is offered to the model under.

Names: chat function names are ``^[a-zA-Z0-9_-]{1,64}$``, MCP tool names are freer. A tool is offered as
``<server_label>__<tool>`` (the name ``/mcp`` uses too), other characters as ``_``, and a name too long
is cut with a digest suffix; the loop keeps the map back, and the same function of (label, tool) names
the calls of earlier turns, so history and offer agree.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

import orjson

_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
MAX_NAME = 64


def function_name(label: str, tool: str) -> str:
    name = _UNSAFE.sub("_", f"{label}__{tool}")
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(f"{label}\0{tool}".encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME - 11]}_{digest}"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def list_tools_item(
    label: str, tools: list[dict[str, Any]], error: str | None = None, item_id: str | None = None
) -> dict[str, Any]:
    """``tools``: ``{name, description, input_schema, annotations}`` each."""
    return {
        "id": item_id or new_id("mcpl"),
        "type": "mcp_list_tools",
        "server_label": label,
        "tools": tools,
        "error": error,
    }


def call_item(
    item_id: str,
    label: str,
    name: str,
    arguments: str,
    *,
    output: str | None = None,
    error: dict[str, Any] | None = None,
    approval_request_id: str | None = None,
    status: str = "completed",
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "mcp_call",
        "server_label": label,
        "name": name,
        "arguments": arguments,
        "output": output,
        "error": error,
        "approval_request_id": approval_request_id,
        "status": status,
    }


def approval_request_item(item_id: str, label: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "mcp_approval_request",
        "server_label": label,
        "name": name,
        "arguments": arguments,
    }


def execution_error(text: str) -> dict[str, Any]:
    """The tool ran and said it failed (MCP ``isError``), or the gateway refused the call."""
    return {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": text}]}


def protocol_error(code: int, message: str) -> dict[str, Any]:
    """The server could not be reached or spoke MCP wrong (timeouts included)."""
    return {"type": "mcp_protocol_error", "code": code, "message": message}


def error_text(error: dict[str, Any]) -> str:
    """What the model reads for a failed call."""
    if error.get("type") == "mcp_tool_execution_error":
        content = error.get("content")
        parts = content if isinstance(content, list) else []
        text = " ".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
        return f"Error: {text}" if text else "Error: the tool failed"
    return f"Error: {error.get('message') or error.get('type')}"


def result_text(item: dict[str, Any]) -> str:
    """The tool result the model sees for an ``mcp_call`` item."""
    error = item.get("error")
    if isinstance(error, dict):
        return error_text(error)
    if isinstance(error, str) and error:
        return f"Error: {error}"
    output = item.get("output")
    return output if isinstance(output, str) else ""


def as_chat(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored ``mcp_call`` as the chat messages that replay it: the model's call, then its result."""
    label, name = str(item.get("server_label") or ""), str(item.get("name") or "")
    arguments = item.get("arguments")
    call = {
        "id": str(item.get("id") or new_id("mcp")),
        "type": "function",
        "function": {
            "name": function_name(label, name),
            "arguments": arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode(),
        },
    }
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": result_text(item)},
    ]
