"""A lean HTTP/1.1 transport for httpx: asyncio protocols, httptools parsing, per-origin keep-alive pools.

httpx's default transport (httpcore over anyio and h11) costs more CPU per request than the gateway itself.
This one keeps httpx's client API (``httpx.MockTransport`` stays the test seam) and takes the short path:
head and body in one ``write``, llhttp parsing in C, the body handed over as it arrives. HTTP/1.1 only.
``fetch`` (a whole answer) and ``open`` (a streamed one) skip httpx's Request and Response objects too.
Failures are httpx's exceptions: ConnectError/ConnectTimeout, PoolTimeout, ReadTimeout (the head or the
next body bytes came too late), RemoteProtocolError (early close, malformed response), ReadError, WriteError,
and ``ResponseTooLarge`` (a whole answer past ``fetch``'s ``max_bytes``; its connection is closed).
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar, cast

import httptools
import httpx

from gateway.memo import Memo

T = TypeVar("T")

_HIGH_WATER = 256 * 1024  # buffered body bytes past which the socket is no longer read
_DEFAULT_PORTS = {b"http": 80, b"https": 443}


class ResponseTooLarge(httpx.TransportError):
    """A 2xx answer's body passed the limit ``fetch`` was given; nothing past the limit was read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer exceeded {limit} bytes")
        self.limit = limit


class _Connection(asyncio.Protocol):
    """One socket. The parser's callbacks fill in the response in flight; ``wait`` awaits the next event."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._interim = False
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self.closed = False
        self.reused = False  # a failure before any response byte may then be a stale keep-alive close
        self.idle_since = 0.0
        self.begin(head_only=False)

    def begin(self, *, head_only: bool) -> None:
        self.in_use = True
        self.head_only = head_only
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.received = False
        self.complete = False
        self.keep_alive = True
        self.error: httpx.TransportError | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TLS one is not a subclass
        if self.closed:  # FastTransport.aclose ran while this was connecting
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.in_use or self.complete:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.error is None and not self.complete:
                self.error = httpx.RemoteProtocolError(f"malformed HTTP response: {exc}")
            self.keep_alive = False
            self.close()
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_use and not self.complete and self.error is None:
            framed = {name.lower() for name, _ in self.headers} & {b"content-length", b"transfer-encoding"}
            if exc is None and self.status and not framed:  # a body delimited by the close
                self.complete, self.keep_alive = True, False
            elif exc is None:
                self.error = httpx.RemoteProtocolError("server disconnected without a complete response")
            else:
                self.error = httpx.ReadError(f"connection lost: {exc!r}")
        self.transport = None  # gone: nothing left to abort
        self.close()
        self._wake()
        if not self.lost.done():
            self.lost.set_result(None)

    def on_message_begin(self) -> None:
        if self.complete:  # bytes past the end of the response: never reuse this connection
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim response (100 Continue): skip it
            self._interim = True
            self.headers = []
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        if self.head_only:  # llhttp cannot be told a HEAD answer has no body; don't reuse the socket
            self.complete, self.keep_alive = True, False
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._wake()

    async def wait(self, read_s: float | None) -> bool:
        """Suspend until the parser or the socket reports something; False when ``read_s`` passed first."""
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiter = waiter
        # one timer per connection, re-armed when it fires early, not one per wait: streams wait per chunk
        self._deadline = math.inf if read_s is None else self._loop.time() + read_s
        if self._timer is not None and self._timer.when() > self._deadline:
            self._timer.cancel()  # set for an earlier request's longer timeout
            self._timer = None
        if self._timer is None and read_s is not None:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
        try:
            return await waiter
        finally:
            self._waiter = None

    def _check_deadline(self) -> None:
        self._timer = None
        if self._waiter is not None and self._loop.time() >= self._deadline:
            self._wake(False)
        elif self._waiter is not None and self._deadline != math.inf:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        self._resume()
        return data

    def finish(self) -> None:
        """The response is done with: keep the connection if both sides allow it, else close it."""
        self.in_use = False
        self.chunks = []
        if self.keep_alive and not self.closed:
            self.reused = True
            self._resume()
            self._pool.release(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self._pool.forget(self)

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _wake(self, news: bool = True) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(news)


class _ResponseStream(httpx.AsyncByteStream):
    """The body as it arrives. Closing it before the end closes the connection."""

    def __init__(self, conn: _Connection, read_s: float | None) -> None:
        self._conn: _Connection | None = conn
        self._read_s = read_s

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        while conn is not None and not conn.chunks:
            if conn.complete:
                self._conn = None
                conn.finish()
                raise StopAsyncIteration
            if conn.error is not None or not await conn.wait(self._read_s):
                self._conn = None
                conn.close()
                raise conn.error or httpx.ReadTimeout("timed out reading the response body")
        if conn is None:
            raise StopAsyncIteration
        return conn.take()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.complete and conn.error is None:  # all arrived, some unread: clean
            conn.finish()
        elif conn is not None:
            conn.close()


class RawResponse:
    """``FastTransport.open``'s answer: status, raw headers and the body as it arrives, undecoded.

    ``stream`` is the ``_ResponseStream`` an ``httpx.Response`` would carry: closing the answer before
    the end closes the connection, a body read to its end gives the connection back to the pool.
    """

    __slots__ = ("headers", "status_code", "stream")

    def __init__(self, status_code: int, headers: list[tuple[bytes, bytes]], stream: _ResponseStream) -> None:
        self.status_code = status_code
        self.headers = headers
        self.stream = stream

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body chunks as the socket delivered them; httpx's errors as ``_ResponseStream`` raises them."""
        return self.stream

    async def aread(self) -> bytes:
        """The rest of the body, whole."""
        return b"".join([part async for part in self.stream])

    async def aclose(self) -> None:
        await self.stream.aclose()


class _Pool:
    """The connections of one origin: at most ``max_connections`` open, the warmest idle one reused first."""

    def __init__(self, origin: tuple[bytes, bytes, int], owner: FastTransport) -> None:
        self.loop = asyncio.get_running_loop()
        self.origin = origin
        self.conns: set[_Connection] = set()
        self._owner = owner
        self._idle: deque[_Connection] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _sweep(self) -> None:
        """Close the idle connections past ``keepalive_expiry``."""
        idle = self._idle
        expired = self.loop.time() - self._owner.keepalive_expiry
        while idle and idle[0].idle_since < expired:  # the longest idle are on the left
            idle.popleft().close()

    def take_idle(self) -> _Connection | None:
        """The most recently used idle connection within ``keepalive_expiry``, if any (no await)."""
        self._sweep()
        return self._idle.pop() if self._idle else None

    async def acquire(self, pool_s: float | None, connect_s: float | None, fresh: bool) -> _Connection:
        while True:
            if fresh:
                self._sweep()
            elif (conn := self.take_idle()) is not None:
                return conn
            if len(self.conns) < self._owner.max_connections:
                return await self._connect(connect_s)
            await self._wait_turn(pool_s)

    def release(self, conn: _Connection) -> None:
        if len(self._idle) >= self._owner.max_idle:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        self._notify()

    def forget(self, conn: _Connection) -> None:
        self.conns.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._notify()

    async def _connect(self, connect_s: float | None) -> _Connection:
        scheme, host, port = self.origin
        name = host.decode("ascii")
        tls = self._owner.ssl_context() if scheme == b"https" else None
        conn = _Connection(self)
        self.conns.add(conn)
        try:
            async with asyncio.timeout(connect_s):
                await self.loop.create_connection(
                    lambda: conn, name, port, ssl=tls, server_hostname=name if tls else None
                )
        except BaseException as exc:
            conn.close()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(f"timed out connecting to {name}:{port}") from None
            if isinstance(exc, OSError):
                raise httpx.ConnectError(f"cannot connect to {name}:{port}: {exc}") from exc
            raise
        return conn

    async def _wait_turn(self, pool_s: float | None) -> None:
        turn: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append(turn)
        try:
            async with asyncio.timeout(pool_s):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled():
                self._notify()  # woken, but leaving: pass the turn on
            elif turn in self._waiters:
                self._waiters.remove(turn)
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout("no connection became free in time") from None
            raise

    def _notify(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return


class FastTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio with per-origin keep-alive pools: ``httpx.AsyncClient(transport=...)``.

    ``max_connections`` and ``max_idle`` bound each origin's open and idle connections; an idle one older
    than ``keepalive_expiry`` seconds is closed, not reused. Timeouts come from the request. A request whose
    reused connection proves closed by the server before any response byte is retried once.
    """

    def __init__(
        self,
        *,
        max_connections: int = 512,
        max_idle: int = 128,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context
        self._pools: dict[tuple[bytes, bytes, int], _Pool] = {}
        # per URL object (providers reuse theirs): the pool, the Host header and the request path
        self._targets: Memo[int, tuple[_Pool, bytes, bytes]] = Memo(256)

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:  # built on first use: loading the CA bundle takes milliseconds
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _pool(self, url: httpx.URL) -> _Pool:
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme.decode()!r}")
        origin = (scheme, url.raw_host, url.port or _DEFAULT_PORTS[scheme])
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(origin, self)
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pool(request.url)
        timeouts = request.extensions.get("timeout") or {}
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await _read_body(request)
        payload = (
            _encode_head(request.method.encode("ascii"), request.url.raw_path, request.headers.raw) + body
        )
        head_only = request.method == "HEAD"
        return await self._send(
            pool, timeouts, lambda conn: _exchange(conn, head_only, payload, timeouts.get("read"))
        )

    def fetch(
        self,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout_s: float,
        max_bytes: int = 1 << 62,
        max_error_bytes: int = 1 << 62,
    ) -> Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        """POST ``body`` and read the whole answer: (status, raw headers, body bytes).

        The short path for non-streamed calls, without httpx's Request and Response objects (about a
        tenth of the gateway's CPU per request). Host and Content-Length are added as httpx would;
        the same pool, timeouts, stale-connection retry and errors as ``handle_async_request``.
        A 2xx body past ``max_bytes`` raises ``ResponseTooLarge``; a non-2xx body is cut at
        ``max_error_bytes`` (an error only needs its start). Either way the rest is never read: the
        connection is closed, so memory stays within the limit however much the upstream sends.
        """
        return self._post(
            url,
            headers,
            body,
            timeout_s,
            lambda conn, data, read_s: _fetch(conn, data, read_s, max_bytes, max_error_bytes),
        )

    def open(
        self, url: httpx.URL, headers: list[tuple[bytes, bytes]], body: bytes, timeout_s: float
    ) -> Awaitable[RawResponse]:
        """POST ``body`` and return once the status line and headers arrived; the body follows as it comes.

        ``fetch``'s short path for streamed calls: the same request bytes, pool, timeouts, retry and
        errors, and the body handed over undecoded. The caller must ``aclose`` the answer.
        """
        return self._post(url, headers, body, timeout_s, _open)

    async def _post(
        self,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout_s: float,
        exchange: Callable[[_Connection, bytes, float], Awaitable[T]],
    ) -> T:
        target = self._targets.get(id(url), url)
        if target is None:
            host = url.raw_host if url.port is None else b"%s:%d" % (url.raw_host, url.port)
            target = self._targets.put(id(url), url, (self._pool(url), host, url.raw_path))
        pool, host, path = target
        wire = [(b"Host", host), *headers, (b"Content-Length", b"%d" % len(body))]
        payload = _encode_head(b"POST", path, wire) + body
        timeouts = {"pool": timeout_s, "connect": timeout_s}
        return await self._send(pool, timeouts, lambda conn: exchange(conn, payload, timeout_s))

    async def _send(
        self, pool: _Pool, timeouts: dict[str, float], exchange: Callable[[_Connection], Awaitable[T]]
    ) -> T:
        for attempt in (1, 2):
            conn = pool.take_idle() if attempt == 1 else None  # the usual case, without a coroutine
            if conn is None:
                conn = await pool.acquire(timeouts.get("pool"), timeouts.get("connect"), fresh=attempt == 2)
            try:
                return await exchange(conn)
            except httpx.TransportError as exc:
                conn.close()
                stale = conn.reused and not conn.received and not isinstance(exc, httpx.TimeoutException)
                if attempt == 2 or not stale:
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def open_connections(self) -> int:
        """Connections held open, idle or in use, across every origin."""
        return sum(len(pool.conns) for pool in self._pools.values())

    async def aclose(self) -> None:
        conns = [conn for pool in self._pools.values() for conn in pool.conns]
        self._pools.clear()
        self._targets = Memo(256)
        for conn in conns:
            conn.close()
        await asyncio.gather(*(conn.lost for conn in conns if conn.transport is not None))


async def _head(conn: _Connection, head_only: bool, data: bytes, read_s: float | None) -> None:
    """Send a request and wait for its response's status line and headers."""
    conn.begin(head_only=head_only)
    if conn.closed or conn.transport is None or conn.transport.is_closing():
        raise httpx.WriteError("connection closed")
    conn.transport.write(data)  # never blocks: asyncio buffers what the socket does not take
    while not conn.status:
        if conn.error is not None:
            raise conn.error
        if not await conn.wait(read_s):
            raise httpx.ReadTimeout("timed out waiting for the response")


async def _exchange(conn: _Connection, head_only: bool, data: bytes, read_s: float | None) -> httpx.Response:
    await _head(conn, head_only, data, read_s)
    return httpx.Response(
        conn.status,
        headers=conn.headers,
        stream=_ResponseStream(conn, read_s),
        extensions={"http_version": b"HTTP/1.1"},
    )


async def _open(conn: _Connection, data: bytes, read_s: float) -> RawResponse:
    await _head(conn, False, data, read_s)
    return RawResponse(conn.status, conn.headers, _ResponseStream(conn, read_s))


async def _fetch(
    conn: _Connection, data: bytes, read_s: float, max_bytes: int, max_error_bytes: int
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    await _head(conn, False, data, read_s)
    parts: list[bytes] = []
    limit = max_bytes if 200 <= conn.status < 300 else max_error_bytes
    total = 0
    while True:
        if conn.chunks:
            part = conn.take()
            total += len(part)
            if total > limit:  # the socket pauses at _HIGH_WATER, so at most that much is past it
                conn.close()
                if 200 <= conn.status < 300:
                    # the traceback keeps this frame: let the bytes go now, not when it is collected
                    parts.clear()
                    del part
                    raise ResponseTooLarge(limit)
                parts.append(part[: len(part) - (total - limit)])
                return conn.status, conn.headers, b"".join(parts)
            parts.append(part)
        elif conn.complete:
            break
        elif conn.error is not None:
            raise conn.error
        elif not await conn.wait(read_s):
            raise httpx.ReadTimeout("timed out reading the response body")
    status, headers = conn.status, conn.headers
    conn.finish()
    return status, headers, parts[0] if len(parts) == 1 else b"".join(parts)


def _encode_head(method: bytes, path: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method, path)]
    lines += [name + b": " + value for name, value in headers]
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    # a CR or LF inside a name or value would smuggle in a header or a whole request
    if head.count(b"\n") != len(lines) + 1 or head.count(b"\r") != len(lines) + 1:
        raise httpx.LocalProtocolError("CR or LF in a request header")
    return head


async def _read_body(request: httpx.Request) -> bytes:
    """A body httpx did not buffer (an async iterator), read whole so that it goes out in one write."""
    assert isinstance(request.stream, httpx.AsyncByteStream), "an AsyncClient sends async bodies"
    body = b"".join([part async for part in request.stream])
    if request.headers.get("transfer-encoding", "").lower() != "chunked":
        return body
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
