"""The request's ``mcp`` tools, validated: pure, dicts in, ``HostedTool`` out, ``BadRequest`` naming
the field.

What a client may ask (OpenAI's ``mcp`` tool): ``server_label`` (required: a routes.yaml ``mcp_servers``
key), ``server_url`` (optional; when given it must be that server's configured URL: the gateway never
calls a host the operator did not configure), ``allowed_tools`` (a list of names, or ``{tool_names}``:
intersected with the server's own ``allowed_tools``), ``require_approval`` (``always``, ``never``, or
``{always: {tool_names}, never: {tool_names}}``; unset: the tool policy decides). Credentials stay the
gateway's: a request's ``headers`` / ``authorization`` are refused rather than silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import BadRequest

_REFUSED = ("headers", "authorization", "connector_id")
_KNOWN = frozenset(
    {"type", "server_label", "server_url", "allowed_tools", "require_approval", "server_description"}
)


@dataclass(frozen=True, slots=True)
class HostedTool:
    label: str
    server_url: str | None
    allowed: frozenset[str] | None
    """The request's own allow-list (None: every tool the server's config allows)."""
    always: frozenset[str] | None
    """Tools the request wants approved; None with ``approve_all``/``approve_none`` deciding."""
    never: frozenset[str]
    approve_all: bool | None
    """``require_approval: always`` (True) or ``never`` (False); None: per tool, or the policy's."""
    path: str
    """``tools[i]``, for the errors that name this tool."""

    def asks_approval(self, tool: str) -> bool | None:
        """What the request says for ``tool``: True (approve first), False (never), None (no word)."""
        if self.always is not None and tool in self.always:
            return True
        if tool in self.never:
            return False
        return self.approve_all


def _bad(path: str, problem: str) -> BadRequest:
    return BadRequest(f"{path}: {problem}", param=path)


def _names(raw: object, path: str) -> frozenset[str]:
    if isinstance(raw, dict):
        raw = raw.get("tool_names")
        path += ".tool_names"
    if not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw):
        raise _bad(path, "must be a list of tool names")
    return frozenset(raw)


def parse_tool(tool: dict[str, Any], path: str) -> HostedTool:
    label = tool.get("server_label")
    if not isinstance(label, str) or not label:
        raise _bad(f"{path}.server_label", "required, must be a string")
    for name in _REFUSED:
        if tool.get(name) is not None:
            raise _bad(
                f"{path}.{name}",
                "not accepted: the gateway holds this MCP server's credentials (routes.yaml mcp_servers)",
            )
    unknown = sorted(tool.keys() - _KNOWN - set(_REFUSED))
    if unknown:
        raise _bad(f"{path}.{unknown[0]}", "unknown field for an mcp tool")
    url = tool.get("server_url")
    if url is not None and not isinstance(url, str):
        raise _bad(f"{path}.server_url", "must be a string")
    raw_allowed = tool.get("allowed_tools")
    allowed = None if raw_allowed is None else _names(raw_allowed, f"{path}.allowed_tools")
    approval = tool.get("require_approval")
    always: frozenset[str] | None = None
    never: frozenset[str] = frozenset()
    approve_all: bool | None = None
    if approval in ("always", "never"):
        approve_all = approval == "always"
    elif isinstance(approval, dict):
        extra = sorted(approval.keys() - {"always", "never"})
        if extra:
            raise _bad(f"{path}.require_approval.{extra[0]}", "must be 'always' or 'never'")
        if approval.get("always") is not None:
            always = _names(approval["always"], f"{path}.require_approval.always")
        if approval.get("never") is not None:
            never = _names(approval["never"], f"{path}.require_approval.never")
    elif approval is not None:
        raise _bad(f"{path}.require_approval", "must be 'always', 'never' or {always, never}")
    return HostedTool(label, url, allowed, always, never, approve_all, path)


def echo_tool(tool: HostedTool, raw: dict[str, Any]) -> dict[str, Any]:
    """The tool as the Response object repeats it (OpenAI's shape, defaults filled)."""
    return {
        "type": "mcp",
        "server_label": tool.label,
        "server_url": tool.server_url,
        "allowed_tools": raw.get("allowed_tools"),
        "require_approval": raw.get("require_approval"),
        "headers": None,
        "server_description": raw.get("server_description"),
    }
