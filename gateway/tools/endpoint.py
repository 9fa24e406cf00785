"""``/mcp``: the gateway as one MCP server (Streamable HTTP) for MCP clients, authenticated by gateway keys.

Authentication happens here, before the SDK sees the request: ``Authorization: Bearer <key>`` or
``x-api-key``, as on ``/v1/*``; a missing, unknown or expired key is 401 with the OpenAI error body. A
delegation token is accepted like on ``/v1/*`` (role ``user``, its parent request id in the audit rows), so
a sidecar acting for a caller reaches the tools that caller's tenant may use, never more. A reviewer key
is refused (403), as on ``/v1/*``: it is for the review surfaces only.

The SDK's session manager runs **stateless** with JSON answers: every POST carries all it needs, so any
replica or worker can serve any request (no session affinity behind a load balancer), and nothing lives
between requests but the upstream clients in ``ToolHub``. The manager and the SDK's import are created on
the first ``/mcp`` request, not at start-up; the chat path never passes here.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from gateway.context import new_request_id
from gateway.errors import GatewayError, render_openai
from gateway.pipeline.auth import authenticate, for_proxy
from gateway.responses import json_response
from gateway.tools.hub import ToolHub

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    from gateway.state import GatewayState

_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:")


class McpEndpoint:
    """The ASGI app mounted at ``/mcp`` (GET, POST, DELETE as the transport defines them)."""

    def __init__(self, hub: ToolHub) -> None:
        self.hub = hub
        self._manager: StreamableHTTPSessionManager | None = None
        self._starting = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        request_id = _request_id(request.headers.get("x-request-id", ""))
        state: GatewayState = request.app.state.gateway
        runtime = state.runtime  # this request keeps the config version it started under
        try:
            principal = for_proxy(authenticate(request.headers, runtime.keys))
        except GatewayError as err:
            headers = {**err.headers, "x-request-id": request_id}
            await json_response(render_openai(err), err.status, headers)(scope, receive, send)
            return
        from gateway.tools.aggregate import McpCaller

        scope.setdefault("state", {})["mcp_caller"] = McpCaller(
            principal, runtime.routes, request_id, state.ledger
        )
        manager = await self._started()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), _id_header(request_id)]}
            await send(message)

        await manager.handle_request(scope, receive, send_with_id)

    async def _started(self) -> StreamableHTTPSessionManager:
        if self._manager is not None:
            return self._manager
        async with self._starting:
            if self._manager is None:
                self._manager = await self._start()
        return self._manager

    async def _start(self) -> StreamableHTTPSessionManager:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from mcp.server.transport_security import TransportSecuritySettings

        from gateway.tools.aggregate import build_server

        manager = StreamableHTTPSessionManager(
            app=build_server(self.hub),
            json_response=True,
            stateless=True,
            # Every request carries a gateway key, and browsers never hold one by ambient authority, so the
            # DNS-rebinding guard (meant for unauthenticated local servers) has nothing to protect here.
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        running = asyncio.Event()

        async def run() -> None:
            async with manager.run():  # the manager's task group lives in this task, to shutdown
                running.set()
                await self._stop.wait()

        self._task = asyncio.create_task(run(), name="mcp-session-manager")
        waiter = asyncio.create_task(running.wait())
        await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not running.is_set():
            waiter.cancel()
            self._task.result()  # raises what stopped it
            raise RuntimeError("the MCP session manager stopped before it started")
        return manager

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _request_id(asked: str) -> str:
    return asked if 0 < len(asked) <= 128 and set(asked) <= _REQUEST_ID_OK else new_request_id()


def _id_header(request_id: str) -> tuple[bytes, bytes]:
    return (b"x-request-id", request_id.encode())
