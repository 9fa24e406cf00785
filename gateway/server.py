"""The HTTP/1.1 server side: uvicorn's httptools protocol, with the proxy endpoints served natively.

**Native proxy endpoints.** A ``POST`` to one of ``GatewayApp.proxied`` is handed to the pipeline
straight from the protocol: no ASGI scope round-trip through ``receive``/``send``, no Starlette request
or response objects, the answer's head and body written in one send. Everything else (admin, health,
metrics, other methods, 404s) runs the ASGI app as usual, on the same connection. Both paths share
uvicorn's parsing, keep-alive, pipelining, flow control and graceful shutdown, and produce the same
bytes; the ASGI path stays what tests and other ASGI servers use.

**Coalesced writes.** ``CoalescingTransport`` gathers what is written in one turn of the event loop
into one send at the end of that turn (``call_soon``), so SSE frames that arrive together leave
together; uvicorn's own head-then-body writes leave as one. A send is a syscall that also wakes the
peer, a measurable share of the gateway's CPU per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from gateway.errors import ClientClosed, RequestTimeout, ServerError, render_openai
from gateway.handlers.endpoint import ProxyEndpoint
from gateway.limits import LimitedProtocol
from gateway.logs import clip
from gateway.pipeline.parse import check_declared_size, check_size
from gateway.responses import JSON, SSE_HEADERS, ClientStalled, Reply, stream_to_client

log = logging.getLogger("gateway")

_JSON_HEAD = b"content-type: " + JSON.encode() + b"\r\n"
_SSE_HEAD = b"".join(
    [b"content-type: text/event-stream; charset=utf-8\r\n", b"transfer-encoding: chunked\r\n"]
    + [b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in SSE_HEADERS.items()]
)
_LAST_CHUNK = b"0\r\n\r\n"


class CoalescingTransport:
    """Wraps an asyncio transport; ``write`` coalesces (see ``write``), everything else delegates."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self._inner = inner
        self._parts: list[bytes] = []
        self._scheduled = False
        self._sent_this_turn = False
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``. The second write of a turn sends what is queued at once (a response's head
        and its body, or its first SSE frame, leave together and without delay); later writes of the
        same turn wait for its end and leave together."""
        if not data:
            return
        self._parts.append(bytes(data))
        if not self._sent_this_turn and len(self._parts) >= 2:
            self._send()
            self._sent_this_turn = True
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._end_of_turn)

    def write_now(self, data: bytes) -> None:
        """Send ``data`` at once, behind anything still queued."""
        self._parts.append(data)
        self._send()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _end_of_turn(self) -> None:
        self._scheduled = False
        self._sent_this_turn = False
        self._send()

    def _send(self) -> None:
        if not self._parts:
            return
        parts, self._parts = self._parts, []
        if not self._inner.is_closing():
            self._inner.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        self._send()  # what was written before close() still goes out, as with a plain transport
        self._inner.close()

    def abort(self) -> None:
        self._parts.clear()
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(len(p) for p in self._parts)

    def __getattr__(self, name: str) -> Any:  # get_extra_info, pause_reading, set_protocol, ...
        return getattr(self._inner, name)


class GatewayHttpProtocol(LimitedProtocol):
    """``uvicorn.run(..., http=GatewayHttpProtocol)``: httptools with the connection limits of
    gateway/limits.py, coalesced writes, native proxy endpoints."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._wire = CoalescingTransport(transport)
        self._gateway = _gateway_app(self.app)
        self._proxied: dict[str, ProxyEndpoint] = getattr(self._gateway, "proxied", {})
        split = getattr(self._gateway, "admin_split", None)
        if split is not None and transport.get_extra_info("sockname")[1] == split.admin_port:
            self._proxied = {}  # the admin port serves no proxy endpoint: the ASGI app answers 404
        self._streaming: asyncio.Task[None] | None = None
        super().connection_made(self._wire)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # marks the request in flight disconnected
        streaming, self._streaming = self._streaming, None
        if streaming is not None:  # the client left mid-stream: stop waiting for the upstream
            streaming.cancel()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        scope = cycle.scope
        endpoint = self._proxied.get(scope["path"]) if self._proxied and scope["method"] == "POST" else None
        if endpoint is None or app is not self.app:  # not proxied, or uvicorn answers 503 (concurrency)
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(self._serve(cycle, endpoint))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _serve(self, cycle: RequestResponseCycle, endpoint: ProxyEndpoint) -> None:
        try:
            pipeline = self._gateway.state.gateway.pipeline
            reply: Reply = await pipeline.handle(
                NativeIncoming(cycle, self), endpoint.operation, endpoint.ingress()
            )
        except Exception:  # the pipeline answers its own errors; this is a bug's last stop
            log.exception("unhandled error on %s", clip(cycle.scope["path"]))
            reply = Reply(500, {}, render_openai(ServerError("The gateway hit an internal error.")))
        try:
            if reply.frames is not None:
                await self._stream(cycle, reply)  # runs ``after`` however the stream ends
                return
            try:
                head = _head(cycle, reply.status, reply.headers, _JSON_HEAD, len(reply.body))
                self._wire.write_now(head + reply.body)
                _complete(cycle)
            finally:
                if reply.after is not None:  # the settlement, even when the answer could not go out
                    await reply.after()
        except Exception:
            log.exception("answering %s failed", clip(cycle.scope["path"]))
            if not cycle.response_complete:
                self._wire.close()
        finally:
            cycle.on_response = _nothing  # as uvicorn's own cycle does once its app returned

    async def _stream(self, cycle: RequestResponseCycle, reply: Reply) -> None:
        """Write the frames as chunks; the head leaves with the first. A client that leaves cancels it."""
        frames = reply.frames
        assert frames is not None
        self._streaming = asyncio.current_task()
        async with stream_to_client(frames, reply.after, lambda: cycle.disconnected):
            try:
                head = _head(cycle, 200, reply.headers, _SSE_HEAD, None)
                async for frame in frames:
                    if not frame:  # an empty chunk would end the chunked body
                        continue
                    chunk = b"%x\r\n%b\r\n" % (len(frame), frame)
                    if head:
                        self._wire.write_now(head + chunk)
                        head = b""
                        continue
                    if cycle.flow.write_paused and not cycle.disconnected:
                        await self._drain(cycle, reply.deadline)
                    self._wire.write(chunk)  # frames of one turn leave together
                self._streaming = None
                self._wire.write_now(head + _LAST_CHUNK)
                _complete(cycle)
            finally:
                self._streaming = None

    async def _drain(self, cycle: RequestResponseCycle, deadline: float | None) -> None:
        """Wait for a slow client to take what was written, but not past the stream's deadline: a
        client that stops reading would otherwise hold the stream, and the upstream behind it, for as
        long as it likes. At the deadline the connection is aborted (a close would wait on the very
        bytes the client does not read) and the stream ends as a client gone."""
        if deadline is None:
            await cycle.flow.drain()
            return
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                await cycle.flow.drain()
        except TimeoutError:
            self._streaming = None  # this task is the one ending it: connection_lost must not cancel it
            self._wire.abort()
            raise ClientStalled("the client stopped reading before the stream's deadline") from None


class NativeIncoming:
    """The request of a uvicorn cycle as the pipeline's ``Incoming``, read without ASGI messages."""

    __slots__ = ("_conn", "_cycle", "headers", "path")

    def __init__(self, cycle: RequestResponseCycle, conn: LimitedProtocol) -> None:
        self._cycle = cycle
        self._conn = conn
        self.path: str = cycle.scope["path"]
        # names arrive lower-cased; reversed, so that the first of repeated headers wins (as Starlette's)
        raw: list[tuple[bytes, bytes]] = cycle.scope["headers"]  # type: ignore[assignment]
        self.headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(raw)}

    async def body(self, limit: int) -> bytes:
        check_declared_size(self.headers, limit)
        cycle = self._cycle
        if cycle.waiting_for_100_continue and not cycle.transport.is_closing():
            cycle.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        while cycle.more_body and not cycle.disconnected:
            check_size(len(cycle.body), limit)
            cycle.flow.resume_reading()
            await cycle.message_event.wait()
            cycle.message_event.clear()
        if cycle.disconnected:
            if self._conn.body_timed_out:  # the protocol answered 408 and closed (gateway/limits.py)
                raise RequestTimeout("The request body did not arrive in time.")
            raise ClientClosed("The client closed the connection before its request body was complete.")
        body = bytes(cycle.body)
        cycle.body = bytearray()
        check_size(len(body), limit)
        return body


def _gateway_app(app: Any) -> Any:
    """The ``GatewayApp`` under uvicorn's wrappers (proxy headers, message logger), or None."""
    for _ in range(8):
        if isinstance(getattr(app, "proxied", None), dict):
            return app
        app = getattr(app, "app", None)
    return None


def _head(
    cycle: RequestResponseCycle, status: int, headers: dict[str, str], fixed: bytes, length: int | None
) -> bytes:
    """Status line, uvicorn's default headers (server, date), the reply's, content framing."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # a CR or LF inside a name or value would smuggle in a header or a whole response
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        raise ValueError("CR or LF in a response header")
    parts = [STATUS_LINE[status]]
    parts += [b"%s: %s\r\n" % pair for pair in cycle.default_headers]
    parts += [text.encode("latin-1"), fixed]
    if length is not None:
        parts.append(b"content-length: %d\r\n" % length)
    if not cycle.keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _complete(cycle: RequestResponseCycle) -> None:
    """The response is out: what uvicorn's cycle does after its last body message."""
    cycle.response_started = cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()


def _nothing() -> None:
    return None
