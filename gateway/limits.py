"""Limits on what one client connection may hold: time, header bytes and count, URL length, and how
many connections a worker keeps.

Without them a client that never finishes its request (sends nothing, drips its headers or its body,
sends a 100 MB header) holds a socket, a file descriptor and parser memory for as long as it likes,
and enough such clients starve everyone else, keyed or not. They are enforced here, in the HTTP
protocol, before any application code runs and before the gateway knows who is calling; the answer
is the OpenAI error envelope with ``connection: close`` wherever HTTP lets the gateway say anything:

    limit                       answer
    header timeout              408 (or a plain close when no byte of a request arrived yet)
    body timeout / min. rate    408, or a close once the answer has started
    header bytes, header count  431
    request line (URL)          414
    connections per worker      the oldest idle or slow connection is closed for a newcomer; when
                                none is, 503 with retry-after at accept, then close
    malformed request           400 (uvicorn's plain-text 400, in the envelope)

**Time limits.** The header clock starts when the connection opens or its previous response ends
(keep-alive) and stops when the headers are complete; uvicorn's shorter keep-alive timer still
closes a connection idle between requests. The body clock starts at the end of the headers: the body
must arrive within ``body_timeout_s`` plus one second per ``body_min_rate`` bytes received (Apache
mod_reqtimeout's ``body=30,MinRate=500``), so a slow but steady upload is never cut while a drip is.
One periodic sweep per worker (``ConnectionGuard``) compares each connection's deadline with the
clock, rather than a timer armed and cancelled on every request: ~1.8 ms for 20,000 connections,
once a second with the default timeouts (a quarter of the shorter timeout, within 50 ms..1 s).

**Connections.** At ``max_connections`` a new connection takes the slot of the connection that has
waited longest for a request's headers without ever sending one whole (idle, or dripping them: it is
closed, with a 503 if part of a request came), else of the oldest kept-alive one between requests;
when every connection has a request past its headers, the newcomer gets a 503 with
``retry-after`` as soon as it is accepted, and is closed: cheap, and clear to an SDK. The cap is at
most half the open files limit; ``gateway serve`` raises the soft limit to the hard one at start
(``raise_open_files_limit``).

**Cost per request.** One add per chunk read; in ``on_message_begin``, ``on_headers_complete`` and
``on_response_complete`` a few assignments, comparisons and a clock read. Header bytes are counted
per chunk while a head is being read: httptools keeps a header's bytes in its own buffer until the
header ends, so counting in ``on_header`` would come after the memory is spent.
"""

from __future__ import annotations

import logging
import math
import resource
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.errors import GatewayError, render_openai
from gateway.settings import Settings

log = logging.getLogger("gateway")

_HEAD, _BODY, _BUSY = 0, 1, 2
_INF = math.inf


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (children inherit it); return
    (before, after). A socket is a file: the common soft default of 1024 would cap a worker far below
    ``max_connections`` and leave nothing for upstream and Redis connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d to %d: %s", soft, target, exc)
            return soft, soft
        return soft, target
    return soft, soft


def connection_cap(configured: int) -> int:
    """``configured``, but at most half the open files limit: the other half stays for the upstream,
    Redis, ledger and log files that the accepted connections' requests need."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or configured <= soft // 2:
        return configured
    log.warning(
        "max_connections %d lowered to %d: half the open files limit (%d); raise `ulimit -n`",
        configured,
        soft // 2,
        soft,
    )
    return soft // 2


class ConnectionGuard:
    """One per worker (held by the app): the limits, and the sweep that enforces the time limits."""

    def __init__(self, settings: Settings | None = None) -> None:
        s = settings if settings is not None else Settings()
        self.header_timeout_s = s.header_timeout_s
        self.body_timeout_s = s.body_timeout_s
        self.body_min_rate = max(s.body_min_rate, 1)
        self.keepalive_timeout_s = s.keepalive_timeout_s
        self.max_header_bytes = s.max_header_bytes
        self.max_headers = s.max_headers
        self.max_url_bytes = s.max_url_bytes
        self.max_connections = connection_cap(s.max_connections)
        # a deadline is enforced at most a quarter of its timeout late, and the sweep runs at most once
        # every 50 ms (small timeouts, in tests) and at least once a second
        self.tick_s = min(max(min(s.header_timeout_s, s.body_timeout_s) / 4, 0.05), 1.0)
        self._connections: set[Any] = set()
        self._scheduled = False
        self._victims: list[LimitedProtocol] = []  # oldest last: see make_room
        self._may_scan = True

    def watch(self, protocol: LimitedProtocol) -> None:
        """Make sure the sweep runs while ``protocol``'s server has connections."""
        if not self._scheduled:
            self._scheduled = True
            self._connections = protocol.connections  # uvicorn's set of this server's open connections
            protocol.loop.call_later(self.tick_s, self._sweep, protocol.loop)

    def make_room(self, newcomer: LimitedProtocol) -> bool:
        """At the cap: close the connection that has waited longest for a request's headers (idle
        or dripping) and never sent one whole, else the oldest kept-alive one between requests, so
        that ``newcomer`` keeps its slot; False when there is none.

        Without this, keyless clients that reconnect as fast as they are closed or refused hold
        every slot, and a keyed client's new connection is refused each time. A request whose
        headers are in is never closed for a newcomer; a newcomer's own headers normally follow
        its connect within a millisecond, and it is the youngest, so the last to go. The candidates
        are listed by one scan, at most once per sweep tick (a flood of refusals must not turn
        into a scan of every connection per accept).
        """
        victims = self._victims
        if not victims and self._may_scan:
            self._may_scan = False
            heads = [c for c in newcomer.connections if isinstance(c, LimitedProtocol) and c._phase == _HEAD]
            # the last to go first: never sent a whole head (slow or idle since connecting), oldest
            # first; then kept-alive connections between requests, oldest first
            heads.sort(key=lambda c: (not c._served, -c._since))
            victims = self._victims = heads
        while victims:
            conn = victims.pop()
            if (
                conn is not newcomer
                and conn._phase == _HEAD
                and not (conn._refused or conn.transport.is_closing())
            ):
                conn.evict()
                return True
        return False

    def _sweep(self, loop: Any) -> None:
        self._may_scan = True
        now = loop.time()
        for conn in list(self._connections):
            if getattr(conn, "deadline", _INF) <= now:  # a websocket protocol has none
                conn.expire(now)
        if self._connections:
            loop.call_later(self.tick_s, self._sweep, loop)
        else:  # nothing to watch: the next connection starts the sweep again
            self._scheduled = False


_default_guard: ConnectionGuard | None = None


def _guard_of(app: Any) -> ConnectionGuard:
    """The ``ConnectionGuard`` of the app under uvicorn's wrappers, or one with the default limits."""
    global _default_guard
    for _ in range(8):
        guard = getattr(app, "guard", None)
        if isinstance(guard, ConnectionGuard):
            return guard
        app = getattr(app, "app", None)
    if _default_guard is None:
        _default_guard = ConnectionGuard()
    return _default_guard


class _Refused(Exception):
    """Raised in a parser callback after the answer is written, so that the parser stops there."""


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above."""

    deadline: float  # when the current phase (head or body) must be over; the guard's sweep reads it
    body_timed_out: bool  # the connection was closed because its request body did not arrive in time

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        guard = self._guard = _guard_of(self.app)
        # uvicorn's idle timer between requests (typed int there; it is given to call_later)
        self.timeout_keep_alive = guard.keepalive_timeout_s  # type: ignore[assignment]
        self.url = b""
        self.body_timed_out = False
        self._since = self.loop.time()
        self._refused = False
        self._served = False  # a request's headers came in whole on this connection
        self._in_head = False  # between a request's first byte and the end of its headers
        self._bytes_in = self._feeding = self._head_bytes = self._head_first = self._body_base = 0
        self._phase = _HEAD
        self.deadline = self._since + guard.header_timeout_s
        if len(self.connections) > guard.max_connections and not guard.make_room(self):
            message = (
                f"This gateway worker is at its connection limit ({guard.max_connections}); retry shortly."
            )
            self._refuse(503, "too_many_connections", message, b"retry-after: 1\r\n")
            return
        guard.watch(self)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        self._feeding = size = len(data)
        self._bytes_in += size
        if self._in_head:
            self._head_bytes += size
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if not self._refused:  # not a limit's answer: malformed HTTP
                self._refuse(400, "invalid_request", "Invalid HTTP request.")
            return
        # The head is still incomplete: its bytes so far, less the part of the chunk it began in
        # (a lower bound, so a head is never refused below the limit; memory stays within limit + chunk).
        guard = self._guard
        if self._in_head and (
            self._head_bytes > guard.max_header_bytes or len(self.url) > guard.max_url_bytes
        ):
            self._refuse_head()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "invalid_request", msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._head_first = self._feeding  # the chunk it began in: an upper bound on its head part

    def on_headers_complete(self) -> None:
        self._in_head = False
        guard = self._guard
        if len(self.headers) > guard.max_headers and len(self.url) <= guard.max_url_bytes:
            self._refuse(431, "headers_too_large", f"The request has more than {guard.max_headers} headers.")
            raise _Refused  # out of the parser, which stops here
        if len(self.url) > guard.max_url_bytes or (
            self._head_bytes + self._head_first > guard.max_header_bytes
            and self._head_size() > guard.max_header_bytes
        ):
            self._refuse_head()
            raise _Refused
        self._phase = _BODY
        self._served = True
        self._since = self.loop.time()
        self._body_base = self._bytes_in
        self.deadline = self._since + guard.body_timeout_s
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # the next request's headers are in: its body is next
        super().on_response_complete()
        if self.transport.is_closing():
            return
        self._since = self.loop.time()
        if pipelined:
            self._phase, self._body_base = _BODY, self._bytes_in
            self.deadline = self._since + self._guard.body_timeout_s
        else:
            self._phase = _HEAD
            self.deadline = self._since + self._guard.header_timeout_s

    def expire(self, now: float) -> None:
        """The sweep found this connection's deadline passed: extend it if it does not apply, else end it."""
        guard = self._guard
        if self._refused or self.transport.is_closing():
            self.deadline = _INF
        elif self._phase == _HEAD:
            self.deadline = _INF
            if self._in_head:
                message = f"The request headers did not arrive within {guard.header_timeout_s:g} s."
                self._refuse(408, "request_timeout", message)
            else:  # no byte of a request: nobody is waiting for an answer
                self.transport.close()
        elif self._phase == _BODY:
            cycle = self.cycle
            if cycle is None or not cycle.more_body or cycle.response_complete:
                self._phase, self.deadline = _BUSY, _INF  # the body is in (or no longer wanted)
            elif self.flow.read_paused:  # the app has not read what came yet: not the client's delay
                self._since, self._body_base = now, self._bytes_in
                self.deadline = now + guard.body_timeout_s
            else:
                received = self._bytes_in - self._body_base
                self.deadline = self._since + guard.body_timeout_s + received / guard.body_min_rate
                if self.deadline <= now:
                    self.deadline = _INF
                    self.body_timed_out = True
                    if cycle.response_started:
                        self.transport.close()
                    else:
                        message = (
                            f"The request body did not arrive in time ({guard.body_timeout_s:g} s, "
                            f"plus 1 s per {guard.body_min_rate} bytes received)."
                        )
                        self._refuse(408, "request_timeout", message)
        else:
            self.deadline = _INF

    def evict(self) -> None:
        """Closed to make room for a new connection (``ConnectionGuard.make_room``)."""
        if self._in_head:  # a request is on its way: say why it will not be served
            message = f"This gateway worker is at its connection limit ({self._guard.max_connections})."
            self._refuse(503, "too_many_connections", message, b"retry-after: 1\r\n")
        else:
            self._refused = True
            self.deadline = _INF
            self.transport.close()

    def _head_size(self) -> int:
        """The head's size as parsed: request line and header lines, each with its CRLF (close enough
        for a limit: the method and version are a few bytes)."""
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _refuse_head(self) -> None:
        guard = self._guard
        if len(self.url) > guard.max_url_bytes:
            self._refuse(414, "url_too_long", f"The request URL is longer than {guard.max_url_bytes} bytes.")
        else:
            message = f"The request headers are larger than {guard.max_header_bytes} bytes."
            self._refuse(431, "headers_too_large", message)

    def _refuse(self, status: int, code: str, message: str, extra: bytes = b"") -> None:
        """Answer ``status`` in the OpenAI envelope and close the connection; read nothing more."""
        self._refused = True
        self.deadline = _INF
        if self.cycle is not None:
            self.cycle.keep_alive = False
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = render_openai(GatewayError(message, status=status, type=kind, code=code))
        parts = [STATUS_LINE[status]]
        parts += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
        parts += [
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body),
            extra,
            b"\r\n",
            body,
        ]
        self.transport.write(b"".join(parts))
        self.transport.close()
