"""The proxy endpoints as one type: an operation and its wire format, served over ASGI or natively.

``ProxyEndpoint.asgi`` is the Starlette endpoint (tests, and any ASGI server); ``gateway/server.py``
calls ``Pipeline.handle`` with the same operation and ingress without building ASGI or Starlette objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.errors import ClientClosed
from gateway.pipeline.parse import check_declared_size, check_size
from gateway.providers.base import Operation
from gateway.proxy import Ingress
from gateway.responses import to_response
from gateway.state import GatewayState


@dataclass(frozen=True, slots=True)
class ProxyEndpoint:
    path: str
    operation: Operation
    ingress: Callable[[], Ingress]

    async def asgi(self, request: Request) -> Response:
        state: GatewayState = request.app.state.gateway
        reply = await state.pipeline.handle(RequestIncoming(request), self.operation, self.ingress())
        return to_response(reply)


class RequestIncoming:
    """A Starlette request as the pipeline's ``Incoming``."""

    __slots__ = ("_request", "headers", "path")

    def __init__(self, request: Request) -> None:
        self.path: str = request.scope["path"]
        self.headers: Mapping[str, str] = request.headers
        self._request = request

    async def body(self, limit: int) -> bytes:
        check_declared_size(self.headers, limit)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in self._request.stream():
                size += len(chunk)
                check_size(size, limit)
                chunks.append(chunk)
        except ClientDisconnect:
            raise ClientClosed(
                "The client closed the connection before its request body was complete."
            ) from None
        return b"".join(chunks)
