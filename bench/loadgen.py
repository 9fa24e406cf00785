"""A light closed-loop HTTP/1.1 load generator on raw asyncio protocols.

Each of ``concurrency`` keep-alive connections sends one prebuilt request, parses the answer in
``data_received`` and sends the next request from that same callback: no task switch, no client
library, a few microseconds of client CPU per request. For streams it also records the time to the
first ``data:`` line of the body (TTFE) and checks the stream ends with ``data: [DONE]``.
A run stops at whichever comes first: its request budget, its deadline, or too many errors.

A body holding ``SEQ_MARK`` is made unique per request: the mark is replaced by the next number of a
sequence shared by all runs, at the same width, so the content-length never changes and a response
cache in front of the upstream misses every time. The ``x-gateway-cache`` header of each answer is
counted, so a run can show that it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

from bench.http1 import Head, ProtocolError, response_status, take_chunks, take_head

MAX_ERRORS = 50
DONE_LINE = b"data: [DONE]"
SEQ_WIDTH = 12
SEQ_MARK = b"@" * SEQ_WIDTH
"""Replaced in each request by the next number of the run's sequence, zero-padded to the same width."""
CACHE_HEADER = b"x-gateway-cache"


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    path: str
    bearer: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    """Extra request headers (the mock upstream reads ``x-bench-chunks`` and ``x-bench-delay-ms``)."""


@dataclass(frozen=True, slots=True)
class Load:
    concurrency: int
    max_requests: int
    duration_s: float
    stream: bool
    ramp_s: float = 0.0
    """Open the connections evenly over this many seconds instead of all at once."""


@dataclass(slots=True)
class Result:
    """Raw samples of one run (nanoseconds)."""

    latencies_ns: list[int] = field(default_factory=list)
    ttfe_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_sample: str | None = None
    elapsed_s: float = 0.0
    cache: dict[str, int] = field(default_factory=dict)
    """Completed answers by their ``x-gateway-cache`` header (``none`` when absent)."""

    @property
    def ok(self) -> int:
        return len(self.latencies_ns)


def build_request(target: Target, body: bytes, stream: bool) -> bytes:
    accept = b"text/event-stream" if stream else b"application/json"
    lines = [
        b"POST %s HTTP/1.1" % target.path.encode(),
        b"host: %s:%d" % (target.host.encode(), target.port),
        b"content-type: application/json",
        b"accept: " + accept,
        b"content-length: %d" % len(body),
    ]
    if target.bearer:
        lines.append(b"authorization: Bearer " + target.bearer.encode())
    lines += [b"%s: %s" % (name.encode(), value.encode()) for name, value in target.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _Run:
    """State shared by the connections of one run."""

    def __init__(self, load: Load, request: bytes, seq: Iterator[int] | None) -> None:
        self.request = request
        at = request.find(SEQ_MARK) if seq is not None else -1
        self._seq = seq if at >= 0 else None
        self._prefix, self._suffix = request[:at], request[at + SEQ_WIDTH :]
        self.stream = load.stream
        self.remaining = load.max_requests
        self.deadline_ns = time.perf_counter_ns() + int((load.ramp_s + load.duration_s) * 1e9)
        self.result = Result()

    def open(self) -> bool:
        """Whether the run may send another request."""
        if self.remaining <= 0 or self.result.errors >= MAX_ERRORS:
            return False
        return time.perf_counter_ns() < self.deadline_ns

    def take(self) -> bool:
        """Claim the next request of the run, if the run is not over."""
        if not self.open():
            return False
        self.remaining -= 1
        return True

    def next_request(self) -> bytes:
        if self._seq is None:
            return self.request
        return self._prefix + b"%012d" % next(self._seq) + self._suffix

    def fail(self, why: str) -> None:
        self.result.errors += 1
        if self.result.error_sample is None:
            self.result.error_sample = why


class _Conn(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self._run = run
        self._buf = bytearray()
        self._body = bytearray()
        self._head: Head | None = None
        self._t0 = 0
        self._ttfe = 0
        self._in_flight = False
        self._transport: asyncio.Transport | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._in_flight:
            head = self._head
            if head is not None and head.content_length is None and not head.chunked:
                try:
                    self._complete()  # the body was delimited by the close
                except (ProtocolError, ValueError) as err:
                    self._run.fail(f"bad response: {err}")
            else:
                self._run.fail(f"connection lost mid-response: {exc!r}")
        self._in_flight = False
        self._transport = None
        if not self.finished.done():
            self.finished.set_result(None)

    def shut(self) -> None:
        """Close the connection: gracefully when idle, by reset when a request is still in flight."""
        if self._transport is None:
            return
        if self._in_flight:
            self._transport.abort()
        else:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            self._parse()
        except (ProtocolError, ValueError) as exc:
            self._run.fail(f"bad response: {exc}")
            self._in_flight = False
            if self._transport is not None:
                self._transport.abort()

    def _send_next(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or not self._run.take():
            if not self.finished.done():
                self.finished.set_result(None)
            return
        self._in_flight = True
        self._ttfe = 0
        self._t0 = time.perf_counter_ns()
        transport.write(self._run.next_request())

    def _parse(self) -> None:
        while self._parse_one() and self._buf:
            pass

    def _parse_one(self) -> bool:
        """Consume what ``_buf`` holds of the current response; True once it completed."""
        if self._head is None:
            self._head = take_head(self._buf)
            if self._head is None:
                return False
        head = self._head
        if head.chunked:
            done = take_chunks(self._buf, self._body)
        else:
            size = head.content_length
            if size is None:  # read until the server closes
                self._body += self._buf
                self._buf.clear()
                done = False
            else:
                done = len(self._buf) >= size
                if done:
                    self._body += self._buf[:size]
                    del self._buf[:size]
        if self._ttfe == 0 and b"data:" in self._body:
            self._ttfe = time.perf_counter_ns()
        if not done:
            return False
        self._complete()
        if self._transport is not None and head.wants_close:
            self._transport.close()
            return False
        self._send_next()
        return True

    def _complete(self) -> None:
        now = time.perf_counter_ns()
        head = self._head
        body = bytes(self._body)
        self._head = None
        self._body.clear()
        self._in_flight = False
        assert head is not None
        status = response_status(head)
        result = self._run.result
        if status != 200:
            self._run.fail(f"HTTP {status}: {body[:300]!r}")
        elif self._run.stream and (self._ttfe == 0 or DONE_LINE not in body[-64:]):
            self._run.fail(f"stream did not end with [DONE]: ...{body[-200:]!r}")
        else:
            result.latencies_ns.append(now - self._t0)
            if self._run.stream:
                result.ttfe_ns.append(self._ttfe - self._t0)
            cache = head.headers.get(CACHE_HEADER, b"none").decode()
            result.cache[cache] = result.cache.get(cache, 0) + 1


async def _connection_loop(target: Target, run: _Run, conns: list[_Conn], delay_s: float = 0.0) -> None:
    """Keep one connection busy until the run ends, reconnecting if the server closes it."""
    loop = asyncio.get_running_loop()
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    while run.open():
        try:
            _, conn = await loop.create_connection(lambda: _Conn(run), target.host, target.port)
        except OSError as exc:
            run.fail(f"connect: {exc!r}")
            await asyncio.sleep(0.05)
            continue
        conns.append(conn)
        await conn.finished


async def run_load(
    target: Target, load: Load, body: bytes, grace_s: float = 30.0, seq: Iterator[int] | None = None
) -> Result:
    """Drive ``load`` against ``target``; a request stuck past the deadline + grace counts as an error.

    With ``seq``, each request's ``SEQ_MARK`` in ``body`` is replaced by ``next(seq)``.
    """
    run = _Run(load, build_request(target, body, load.stream), seq)
    conns: list[_Conn] = []
    start = time.perf_counter()
    step = load.ramp_s / load.concurrency
    tasks = [
        asyncio.ensure_future(_connection_loop(target, run, conns, i * step)) for i in range(load.concurrency)
    ]
    _, pending = await asyncio.wait(tasks, timeout=load.ramp_s + load.duration_s + grace_s)
    run.result.elapsed_s = time.perf_counter() - start
    for task in pending:
        task.cancel()
    if pending:
        run.fail(f"{len(pending)} connection(s) still waiting after the grace period")
    for conn in conns:
        conn.shut()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*pending, return_exceptions=True)
    return run.result
