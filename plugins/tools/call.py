"""One tool call: the arguments checked against the tool's JSON Schema, then one HTTP request, its answer
bounded. Every failure is a tool error result (``isError: true``) a model can read: arguments that do not
fit the schema (naming the field), a timeout, an unreachable endpoint, an error status. Never retried: the
endpoint may have acted even when its answer was lost, and the gateway's contract is at most once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
import mcp_types as types
from jsonschema.exceptions import ValidationError, best_match

from plugins.tools.registry import BODY_METHODS, HttpTool

COUNT_CEILING = 64 * 1024 * 1024
"""An answer without Content-Length is read (and dropped) this far to say how much was cut."""


def marker(over: int) -> str:
    return f"…[truncated: {over} bytes over the limit]"


def error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def invalid(arguments: Mapping[str, Any], tool: HttpTool) -> str | None:
    """Why the arguments do not fit the tool's schema, naming the field; None when they do."""
    found = best_match(tool.validator.iter_errors(dict(arguments)))
    if found is None:
        return None
    return f"Invalid arguments for {tool.name!r}: {_where(found)}: {found.message}"


def _where(err: ValidationError) -> str:
    path = "arguments" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
    required = err.validator_value
    if err.validator == "required" and isinstance(err.instance, dict) and isinstance(required, list):
        missing = [p for p in required if p not in err.instance]
        if missing:
            return f"{path}.{missing[0]}"
    return path


def request_parts(tool: HttpTool, arguments: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The URL (template filled, each value URL-encoded as one path segment) and httpx's other arguments."""
    url = tool.url.format_map({name: quote(_text(arguments[name]), safe="") for name in tool.path_args})
    rest = {k: v for k, v in arguments.items() if k not in tool.path_args}
    if tool.method in BODY_METHODS:
        return url, {"json": rest}
    query = {k: _text(v) for k, v in rest.items()}
    return url, {"params": query} if query else {}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def call(
    client: httpx.AsyncClient, tool: HttpTool, arguments: Mapping[str, Any]
) -> types.CallToolResult:
    reason = invalid(arguments, tool)
    if reason is not None:
        return error(reason)
    url, extra = request_parts(tool, arguments)
    try:
        async with client.stream(
            tool.method, url, headers=dict(tool.headers), timeout=tool.timeout_s, **extra
        ) as answer:
            body, over = await _read(answer, tool.max_response_bytes)
    except httpx.TimeoutException:
        return error(f"{tool.name}: the endpoint did not answer within {tool.timeout_s:g}s")
    except httpx.HTTPError as exc:
        return error(f"{tool.name}: the endpoint is unreachable ({type(exc).__name__})")
    text = body.decode("utf-8", errors="replace") + (marker(over) if over else "")
    if answer.status_code >= 400:
        return error(f"{tool.name}: the endpoint answered HTTP {answer.status_code}: {text}")
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


async def _read(answer: httpx.Response, limit: int) -> tuple[bytes, int]:
    """At most ``limit`` bytes of the body, and how many more there were: from ``Content-Length`` when the
    endpoint sent it (the rest is not read), else by reading on and counting, up to ``COUNT_CEILING``."""
    kept = bytearray()
    async for chunk in answer.aiter_bytes():
        kept += chunk
        if len(kept) > limit:
            break
    if len(kept) <= limit:
        return bytes(kept), 0
    declared = answer.headers.get("content-length", "")
    if declared.isdigit() and "content-encoding" not in answer.headers:
        return bytes(kept[:limit]), int(declared) - limit
    total = len(kept)
    async for chunk in answer.aiter_bytes():
        total += len(chunk)
        if total > COUNT_CEILING:
            break
    return bytes(kept[:limit]), total - limit
