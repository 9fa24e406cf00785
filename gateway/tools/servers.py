"""Clients to the configured upstream MCP servers (routes.yaml ``mcp_servers``), with the official SDK.

One ``ServerClient`` per server holds what outlives a call: an HTTP connection pool carrying the server's
configured ``headers`` (its credentials, which never leave this module), the protocol version and
discovery result the server answered with, and its tool listing (a short TTL).

Sessions. MCP over Streamable HTTP has two eras. With a 2026-07-28 server (the SDK's own default) there is
no session: each request carries its envelope, so "a session per call" costs nothing once the discovery
result is kept; the gateway opens a fresh SDK ``Client`` per call with that result adopted
(``prior_discover``) and sends the one ``tools/call`` request itself (see ``_call``), so one call is one
HTTP round trip. A long-lived shared ``Client`` would save only the ``Client`` object's construction, while
tying every call to one task group that must be supervised, reconnected after any server restart and
shared by concurrent calls. With an older (2025) server, each fresh ``Client`` pays the ``initialize``
handshake (two more round trips, and a DELETE at the end); acceptable next to a tool's own latency, and
such a server's session state is then never shared between two tenants' calls. Measured (an SDK server in
another process on loopback, 300 sequential calls, a loaded 2-core machine): a reused session costs the
client 1.75 ms CPU per call, a fresh adopted one 2.43 ms (+0.7 ms; wall time 7.2 vs 7.6 ms); a fresh
negotiated one also pays a discover round trip, and ``Client.call_tool`` on it two re-lists per call.
``python -m bench.mcp`` measures the whole of what ``/mcp`` adds.

Bounds. Each operation (connect, discover, list or call, answer) is under the server's ``timeout_s``. A
call's result is cut to ``max_result_bytes`` (text blocks shortened, blocks that no longer fit replaced)
with a marker saying how many bytes were dropped; the SDK's read of one SSE event is capped at
``READ_CEILING`` (a larger answer is an error result, not memory exhausted).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.config.model import MIB, McpServerConfig
from gateway.tools.errors import ToolServerTimeout, ToolServerUnavailable

log = logging.getLogger("gateway.tools")

LIST_TTL_S = 10.0
"""How long a server's tool listing is reused before it is asked again."""
FAILURE_TTL_S = 5.0
"""How long a failed listing is answered from memory (the same error) before the server is asked again."""
READ_CEILING = 64 * MIB
"""The most the SDK buffers for one SSE event of an answer; ``max_result_bytes`` then cuts it down."""
MAX_PAGES = 20
"""A tool listing's pages followed at most (a server whose cursor never ends cannot hang a listing)."""

Outcome = Literal["ok", "tool_error", "error", "timeout", "unreachable"]
"""``ok``; ``tool_error``: the tool answered ``is_error: true``; ``error``: the server answered a
JSON-RPC error (unknown tool, invalid arguments, a crash); ``timeout``; ``unreachable``: no answer at all
(refused connection, an HTTP error status, not an MCP server)."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A call's result as the caller gets it: bounded, with how the call went."""

    result: types.CallToolResult
    outcome: Outcome = "ok"
    truncated_bytes: int = 0
    """Bytes cut to fit ``max_result_bytes`` (0: the result is whole)."""

    @property
    def is_error(self) -> bool:
        return self.result.is_error

    @property
    def text(self) -> str:
        """The text blocks joined: what a model is shown as the tool's output."""
        return "\n".join(b.text for b in self.result.content if isinstance(b, types.TextContent))


def error_result(message: str, outcome: Outcome) -> ToolResult:
    return ToolResult(types.CallToolResult(content=[_text(message)], is_error=True), outcome)


class ServerClient:
    """Calls to one upstream MCP server."""

    def __init__(self, config: McpServerConfig, *, list_ttl_s: float = LIST_TTL_S) -> None:
        self.config = config
        self._list_ttl_s = list_ttl_s
        self._http = httpx2.AsyncClient(
            headers=dict(config.headers),
            timeout=httpx2.Timeout(config.timeout_s),
            follow_redirects=False,  # the SDK follows same-origin redirects itself
            event_hooks={"response": [_note_refusal]},
        )
        self._mode: str = "auto"
        self._discover: types.DiscoverResult | None = None
        self._tools: tuple[float, tuple[types.Tool, ...]] | None = None
        self._failed: tuple[float, ToolServerUnavailable | ToolServerTimeout] | None = None
        self._listing: asyncio.Lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the public operations -------------------------------------------------------------------------

    async def list_tools(self, *, refresh: bool = False) -> tuple[types.Tool, ...]:
        """The server's tools (every page), reused for ``LIST_TTL_S``; raises ``ToolServerUnavailable`` or
        ``ToolServerTimeout``."""
        cached = self._tools
        if cached is not None and not refresh and time.monotonic() < cached[0]:
            return cached[1]
        async with self._listing:  # concurrent callers after expiry share one listing
            cached = self._tools
            if cached is not None and not refresh and time.monotonic() < cached[0]:
                return cached[1]
            failed = self._failed
            if failed is not None and not refresh and time.monotonic() < failed[0]:
                # A server that just failed is not asked again at once: a listing of every server (/mcp's
                # tools/list) would otherwise wait out a dead server's timeout on each request.
                raise type(failed[1])(failed[1].message)
            try:
                async with asyncio.timeout(self.config.timeout_s), self._session() as client:
                    tools = await self._list_all(client)
            except Exception as exc:  # mapped here, at the one boundary to the SDK
                error = self._listing_error(exc)
                self._failed = (time.monotonic() + FAILURE_TTL_S, error)
                raise error from None
            self._tools = (time.monotonic() + self._list_ttl_s, tools)
            self._failed = None
            return tools

    async def call_tool(self, tool: str, arguments: Mapping[str, Any] | None) -> ToolResult:
        """Run ``tool`` once on the server; every failure is an error result (never raised), so a model
        reads it as the tool's answer. Not retried: a call that timed out may have run."""
        timeout_s = self.config.timeout_s
        try:
            async with asyncio.timeout(timeout_s), self._session() as client:
                result = await self._call(client, tool, dict(arguments or {}))
        except Exception as exc:  # mapped here, at the one boundary to the SDK
            return self._call_error(tool, exc)
        bounded, cut = bound(result, self.config.max_result_bytes)
        return ToolResult(bounded, "tool_error" if bounded.is_error else "ok", cut)

    # -- sessions --------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Client]:
        """A fresh SDK ``Client`` over the shared connection pool, adopting the known protocol version."""
        _refusals.set([])  # this call's own list (the SDK's tasks see it through the copied context)
        transport = streamable_http_client(
            self.config.url, http_client=self._http, max_sse_event_size=READ_CEILING
        )
        client = Client(
            transport,
            mode=self._mode,
            prior_discover=self._discover,
            cache=None,  # the gateway keeps the listing itself (LIST_TTL_S)
            read_timeout_seconds=self.config.timeout_s,
        )
        async with client:
            if self._mode == "auto":
                # Remember what the server speaks, so the next Client skips the negotiation.
                version = client.protocol_version
                if version in MODERN_PROTOCOL_VERSIONS:
                    self._mode, self._discover = version, client.session.discover_result
                else:
                    self._mode = "legacy"
            yield client

    async def _call(self, client: Client, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """One ``tools/call`` round trip. Not ``Client.call_tool``: on a fresh Client that lists the
        server's tools to check the result against its output schema, twice per call; the gateway passes
        results through (their caller checks them). A server that wants argument headers (2026
        ``x-mcp-header``) refuses with ``HEADER_MISMATCH`` before running anything, and then the SDK's
        own path (list, resend once) is taken."""
        request = types.CallToolRequest(params=types.CallToolRequestParams(name=tool, arguments=arguments))
        try:
            return await client.session.send_request(request, types.CallToolResult)
        except MCPError as exc:
            if exc.code != types.HEADER_MISMATCH:
                raise
        return await client.call_tool(tool, arguments)

    async def _list_all(self, client: Client) -> tuple[types.Tool, ...]:
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await client.session.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tuple(tools)

    # -- errors ----------------------------------------------------------------------------------------

    def _listing_error(self, exc: BaseException) -> ToolServerUnavailable | ToolServerTimeout:
        name = self.config.name
        cause = _cause(exc)
        if isinstance(cause, TimeoutError | httpx2.TimeoutException):
            return ToolServerTimeout(f"MCP server {name!r} did not answer within {self.config.timeout_s:g}s.")
        self._forget_handshake()
        refused = _refused()
        if refused is not None:
            log.error(
                "MCP server %r answered HTTP %d to the gateway: check its url and headers", name, refused
            )
        else:
            log.warning("listing the tools of MCP server %r failed: %s", name, _describe(cause))
        return ToolServerUnavailable(f"MCP server {name!r} is unavailable.")

    def _call_error(self, tool: str, exc: BaseException) -> ToolResult:
        name = self.config.name
        cause = _cause(exc)
        if isinstance(cause, TimeoutError | httpx2.TimeoutException):
            message = (
                f"MCP server {name!r} did not answer the call of {tool!r} within {self.config.timeout_s:g}s."
            )
            return error_result(message, "timeout")
        refused = _refused()
        if refused is not None:
            self._forget_handshake()
            log.error(
                "MCP server %r answered HTTP %d to the gateway: check its url and headers", name, refused
            )
            return error_result(f"MCP server {name!r} is unavailable.", "unreachable")
        if isinstance(cause, MCPError):
            # The server's own error (unknown tool, invalid params, a crash inside the tool): its text is
            # about the tool, not the credentials, so the model may read it.
            return error_result(f"MCP server {name!r} answered an error: {cause.message}", "error")
        self._forget_handshake()
        log.warning("calling %r on MCP server %r failed: %s", tool, name, _describe(cause))
        return error_result(f"MCP server {name!r} is unavailable.", "unreachable")

    def _forget_handshake(self) -> None:
        """After a failure the server may have been replaced (another version): negotiate again."""
        self._mode, self._discover = "auto", None


class McpServers:
    """The ``ServerClient`` of each configured server, kept across config versions while a server's
    config is unchanged (a reload that edits one server renews only that server's client)."""

    def __init__(self, *, list_ttl_s: float = LIST_TTL_S) -> None:
        self._clients: dict[str, ServerClient] = {}
        self._retiring: dict[asyncio.Task[None], ServerClient] = {}
        self._list_ttl_s = list_ttl_s

    def client(self, config: McpServerConfig) -> ServerClient:
        current = self._clients.get(config.name)
        if current is not None and current.config == config:
            return current
        if current is not None:
            self._retire(current)
        client = self._clients[config.name] = ServerClient(config, list_ttl_s=self._list_ttl_s)
        return client

    def _retire(self, client: ServerClient) -> None:
        """Close a replaced client once the calls that may still hold it have surely ended."""

        async def close_later() -> None:
            await asyncio.sleep(client.config.timeout_s + 1)
            await client.aclose()

        task = asyncio.get_running_loop().create_task(close_later(), name="mcp-client-retire")
        self._retiring[task] = client
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def aclose(self) -> None:
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        for client in [*self._clients.values(), *(c for _, c in retiring)]:
            await client.aclose()
        self._clients.clear()
        self._retiring.clear()


# -- bounding a result ----------------------------------------------------------------------------------


def marker(over: int) -> str:
    return f"…[truncated: {over} bytes over the limit]"


def bound(result: types.CallToolResult, limit: int) -> tuple[types.CallToolResult, int]:
    """``result`` cut to about ``limit`` bytes of content (JSON size of each block; text by its UTF-8
    bytes), and how many bytes were over. The last text block that fits in part is cut and marked;
    blocks past the limit are dropped, with one marker block saying how much went."""
    sizes = [len(block.model_dump_json(by_alias=True, exclude_none=True)) for block in result.content]
    structured = (
        len(types.CallToolResult(content=[], structured_content=result.structured_content).model_dump_json())
        if result.structured_content is not None
        else 0
    )
    total = sum(sizes) + structured
    if total <= limit:
        return result, 0
    over = total - limit
    kept: list[types.ContentBlock] = []
    room = limit
    for block, size in zip(result.content, sizes, strict=True):
        if size <= room:
            kept.append(block)
            room -= size
            continue
        if isinstance(block, types.TextContent) and room > 0:
            cut = block.text.encode()[: max(0, room - 64)].decode(errors="ignore")
            kept.append(types.TextContent(type="text", text=cut + marker(over)))
        else:
            kept.append(_text(marker(over)))
        break
    # The structured copy of a too-large result is dropped rather than cut: half a JSON value is no value.
    return result.model_copy(update={"content": kept, "structured_content": None}), over


_REFUSED = frozenset({401, 403, 404, 405})
"""HTTP statuses that mean the server turned the gateway away (credentials, URL), not a tool's error."""
_REFUSED_LOG = "MCP server %r answered HTTP %d to the gateway: check its url and headers"
_refusals: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("mcp_refusals", default=None)


async def _note_refusal(response: httpx2.Response) -> None:
    """httpx2 response hook: the SDK turns a non-JSON-RPC 401/404 into a generic JSON-RPC error, so the
    status is noted here to tell "the server refused us" from "the tool failed"."""
    statuses = _refusals.get()
    if statuses is not None and response.status_code in _REFUSED:
        statuses.append(response.status_code)


def _refused() -> int | None:
    statuses = _refusals.get()
    return statuses[0] if statuses else None


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _cause(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (anyio's task groups wrap what the SDK's tasks raise)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
