"""A lean asyncio Redis client: one pipelined connection, hiredis for the protocol, deadlines per call.

Why not redis-py: its asyncio client costs ~0.1-0.25 ms of CPU per command here (connection pool,
locks, a StreamReader, retry wrappers), more than the rest of a request's pipeline. The gateway needs
a handful of commands (EVALSHA, GET, SET, HVALS, HGETALL, HMGET, PING), so this client does only:

* **One connection, pipelined.** Commands are written in order and replies come back in order, so
  concurrent callers share the socket without locks: each call appends its encoded command and a
  future. Commands issued in the same event-loop turn leave in one write (auto-pipelining), so a
  burst of settlements costs one syscall, not one each. A call may *linger* (``linger_s``): when the
  connection is idle (no reply awaited) it leaves at the end of the turn like any other; otherwise it
  leaves once the awaited replies are in, with the next urgent write (behind the urgent commands), or
  when ``linger_s`` has passed, whichever comes first. So a settlement seldom rides with an admission,
  which would then wait while Redis runs both. An ``ahead`` call lingers too, but goes first in
  whatever write comes next and waits for one even on an idle connection (a small cache put: the
  next lookup must see it, and Redis stores it in microseconds). ``submit(now=True)`` writes before
  it returns;
  ``eager=True`` does so when no reply is awaited (nothing to pipeline with, so the end of the turn
  would only be later), else joins the turn's write like any other.
* **A deadline per call**, ``timeout_s`` from when it is queued (a connect, when one is needed, has
  its own). A call past it gets ``TimeoutError``; its reply, if it ever comes, is dropped in order.
  One watchdog timer per connection enforces them. When a deadline passes and the connection has not
  answered anything for a whole deadline, it is presumed dead (a partition sends no RST), closed,
  and the next call dials again.
* **Errors**: connection failures raise ``ConnectionError`` (an ``OSError``); ``NotSentError``, a
  ``ConnectionError``, when the command was never written (no connection could be made), so the
  caller knows it cannot have run; ``-ERR`` replies raise ``ReplyError``. ``Script.call`` runs
  EVALSHA and, on ``NOSCRIPT`` (Redis restarted or flushed), loads the script and runs it once
  more: NOSCRIPT means it did not run, so the retry is safe.
* **URLs**: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS), ``unix:///path?db=N``.
  AUTH and SELECT go ahead of the first command on every (re)connect. A ``locate`` callable, when
  given, says where to dial at each (re)connect instead (``topology.py``: the primary the Sentinels
  name); it costs nothing once connected.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

if TYPE_CHECKING:
    from gateway.store.topology import Client

Arg = str | int | float | bytes
Command = Sequence[Arg]


class ReplyError(Exception):
    """Redis answered ``-ERR ...`` (or another error reply) to a command."""


class NotSentError(ConnectionError):
    """The command was never written: no connection could be made. It cannot have run."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    """A unix socket path, instead of host and port."""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported redis URL scheme {parts.scheme!r} (redis, rediss or unix)")
        db_text = parse_qs(parts.query).get("db", [""])[0]
        if parts.scheme != "unix" and not db_text:
            db_text = parts.path.lstrip("/")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            path=parts.path if parts.scheme == "unix" else None,
            db=int(db_text or 0),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
        )


class Locator(Protocol):
    """Where to dial, asked once per (re)connect; ``ConnectionError`` when nobody knows."""

    async def __call__(self) -> Endpoint: ...

    async def close(self) -> None: ...


class _Pending:
    """A call's place in the reply queue; ``n`` replies are collected into one result list."""

    __slots__ = ("deadline", "future", "n", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], n: int, deadline: float) -> None:
        self.future = future
        self.n = n
        self.deadline = deadline
        self.replies: list[Any] = []


class _Connection(asyncio.Protocol):
    def __init__(self, on_lost: Any, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._watchdog: asyncio.TimerHandle | None = None
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._waiting: collections.deque[_Pending] = collections.deque()
        # Not yet written: urgent commands, then lingering ones. A write sends the urgent ones first
        # (an admission does not wait behind the settlements that share its write); the replies are
        # expected in the order written.
        self._urgent: list[tuple[bytes, _Pending]] = []
        self._lingering: list[tuple[bytes, _Pending]] = []
        # Lingering too, but written ahead of everything else, and kept for company even when the
        # connection is idle: cheap writes a later command must see (a cache put, then the next lookup).
        self._ahead: list[tuple[bytes, _Pending]] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()  # once: each lookup costs a getpid() on 3.11
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_reply = time.monotonic()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        self.last_reply = time.monotonic()
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(ConnectionError(f"redis protocol error: {exc}"))
                return
            if reply is False:
                if not waiting and self._lingering and not self._flush_scheduled:
                    # idle again: what lingered goes now, after the callers just woken have run
                    self._flush_scheduled = True
                    self.loop.call_soon(self._flush)
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self._fail(ConnectionError("redis sent an unexpected reply"))
                return
            pending = waiting[0]
            pending.replies.append(reply)
            if len(pending.replies) == pending.n:
                waiting.popleft()
                if not pending.future.done():  # a caller whose deadline passed is gone
                    pending.future.set_result(pending.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            ConnectionError(f"redis connection lost: {exc!r}" if exc else "redis closed the connection")
        )

    # -- sending ------------------------------------------------------------------------------------------

    def send(
        self,
        packed: bytes,
        n: int,
        linger_s: float = 0.0,
        now: bool = False,
        ahead: bool = False,
        eager: bool = False,
    ) -> asyncio.Future[list[Any]]:
        """Queue a command for the next write: this loop turn's, or within ``linger_s`` if lingering
        (then it rides along with the next urgent command, or leaves on its own when the time is up);
        ``now``: written before this returns, with whatever else is queued; ``ahead`` (lingering):
        first in the write it leaves with, and it waits for one even on an idle connection."""
        if self.closed or self.transport is None:
            raise NotSentError("redis connection is closed")
        loop = self.loop
        future: asyncio.Future[list[Any]] = loop.create_future()
        pending = _Pending(future, n, loop.time() + self.timeout_s)
        if self._watchdog is None:
            self._watchdog = loop.call_at(pending.deadline, self._check_deadlines)
        if now or (eager and not self._waiting):
            self._urgent.append((packed, pending))
            self._flush()
        elif linger_s <= 0:
            self._urgent.append((packed, pending))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        elif ahead:
            self._ahead.append((packed, pending))
            if self._timer is None and not self._flush_scheduled:
                self._timer = loop.call_later(linger_s, self._flush)
        else:
            self._lingering.append((packed, pending))
            if not self._waiting and not self._flush_scheduled:  # idle: Redis is free for it now
                self._flush_scheduled = True
                loop.call_soon(self._flush)
            elif self._timer is None and not self._flush_scheduled:
                self._timer = loop.call_later(linger_s, self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is None or self.closed:
            return
        queued = self._urgent
        if self._ahead:
            queued = self._ahead + queued
        if self._lingering:
            queued = queued + self._lingering
        if not queued:
            return
        self._urgent, self._lingering, self._ahead = [], [], []
        self._waiting.extend(pending for _, pending in queued)
        self.transport.write(queued[0][0] if len(queued) == 1 else b"".join(p for p, _ in queued))

    def _check_deadlines(self) -> None:
        """One timer per connection, not one per call: at the earliest deadline of the calls still
        waiting, fail those past theirs with ``TimeoutError`` (their replies, if any come, are dropped
        in order) and re-arm for the next. A connection silent for a whole deadline is presumed dead
        (a partition sends no RST) and closed, so the next call dials a fresh one."""
        self._watchdog = None
        now = self.loop.time()
        expired = False
        upcoming = math.inf
        unsent = [pending for _, pending in self._ahead + self._urgent + self._lingering]
        for pending in [*self._waiting, *unsent]:
            if pending.future.done():
                continue
            if pending.deadline <= now:
                pending.future.set_exception(TimeoutError("redis did not answer within the deadline"))
                expired = True
            else:
                upcoming = min(upcoming, pending.deadline)
        if expired and self.stalled_for() >= self.timeout_s:
            self.close()
        elif upcoming != math.inf:
            self._watchdog = self.loop.call_at(upcoming, self._check_deadlines)

    def stalled_for(self) -> float:
        """Seconds since the last reply while replies are awaited (0 when nothing is awaited)."""
        return time.monotonic() - self.last_reply if self._waiting else 0.0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._fail(ConnectionError("redis connection closed"))

    def _fail(self, exc: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        unsent = [pending for _, pending in self._ahead + self._urgent + self._lingering]
        self._urgent, self._lingering, self._ahead = [], [], []
        for pending in self._waiting:
            if not pending.future.done():
                pending.future.set_exception(exc)
        for pending in unsent:  # never written: they cannot have run
            if not pending.future.done():
                pending.future.set_exception(NotSentError(str(exc)))
        self._waiting.clear()
        self._on_lost(self)


class RespClient:
    """See the module docstring. Safe for any number of concurrent callers on one event loop."""

    def __init__(self, url: str | Endpoint, *, timeout_s: float = 0.5, locate: Locator | None = None) -> None:
        self.endpoint = url if isinstance(url, Endpoint) else Endpoint.from_url(url)
        self.timeout_s = timeout_s
        self._locate = locate
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def execute(self, *args: Arg) -> Any:
        """Run one command; its reply (``ReplyError`` raised for an error reply)."""
        (reply,) = await self.pipeline([args])
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Command], *, linger_s: float = 0.0) -> list[Any]:
        """Run commands back to back in one write; their replies, error replies included as
        ``ReplyError`` instances (not raised), in order.

        ``linger_s`` > 0 lets the write wait that long for company (see ``_Connection.send``): for
        commands nobody waits on, such as settlements after the response has gone.
        """
        conn = self._conn
        if conn is None or conn.closed:
            try:
                async with asyncio.timeout(self.timeout_s):
                    conn = await self._connect()
            except OSError as exc:  # refused, unreachable, or the connect deadline (TimeoutError)
                raise NotSentError(f"redis unreachable: {exc!r}") from exc
        return await self._send(conn, commands, linger_s)

    def submit(
        self,
        commands: Sequence[Command],
        *,
        linger_s: float = 0.0,
        now: bool = False,
        ahead: bool = False,
        eager: bool = False,
    ) -> asyncio.Future[list[Any]]:
        """``pipeline`` started now, awaited later: the commands join this loop turn's write at once
        (no task needed when connected), or with ``now`` are written before this returns (with
        ``eager``: when no reply is awaited), or with ``ahead`` (and ``linger_s``) go first in the next
        write, however idle the connection (see ``_Connection.send``). Cancel the future to abandon
        the replies."""
        conn = self._conn
        if conn is None or conn.closed:
            return asyncio.ensure_future(self.pipeline(commands, linger_s=linger_s))
        return self._send(conn, commands, linger_s, now, ahead, eager)

    def _send(
        self,
        conn: _Connection,
        commands: Sequence[Command],
        linger_s: float,
        now: bool = False,
        ahead: bool = False,
        eager: bool = False,
    ) -> asyncio.Future[list[Any]]:
        if len(commands) == 1:
            packed = hiredis.pack_command(tuple(commands[0]))  # type: ignore[arg-type]
        else:
            packed = b"".join(hiredis.pack_command(tuple(c)) for c in commands)  # type: ignore[arg-type]
        # its deadline: see _check_deadlines
        return conn.send(packed, len(commands), linger_s, now, ahead and linger_s > 0, eager)

    async def _connect(self) -> _Connection:
        """One dial shared by every caller that needs a connection at the same moment."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._dial())
            # retrieved here too, so a dial every caller gave up on is not reported as unhandled
            self._connecting.add_done_callback(_consume)
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _dial(self) -> _Connection:
        async with asyncio.timeout(self.timeout_s):
            return await self._open()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        ep = self.endpoint if self._locate is None else await self._locate()
        conn: _Connection
        if ep.path is not None:
            _, conn = await loop.create_unix_connection(
                lambda: _Connection(self._lost, self.timeout_s), ep.path
            )
        else:
            context = ssl.create_default_context() if ep.tls else None
            _, conn = await loop.create_connection(
                lambda: _Connection(self._lost, self.timeout_s), ep.host, ep.port, ssl=context
            )
        hello: list[Command] = []
        if ep.password is not None:
            hello.append(("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password))
        if ep.db:
            hello.append(("SELECT", ep.db))
        if hello:
            packed = b"".join(hiredis.pack_command(tuple(c)) for c in hello)  # type: ignore[arg-type]
            for reply in await conn.send(packed, len(hello)):
                if isinstance(reply, ReplyError):
                    conn.close()
                    raise ConnectionError(f"redis refused the connection setup: {reply}")
        self._conn = conn
        return conn

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    def drop(self) -> None:
        """Close the connection now (its callers get ``ConnectionError``); the next call dials again,
        asking ``locate`` where to. For a server that answered READONLY: it is no primary any more."""
        if self._conn is not None:
            self._conn.close()

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._locate is not None:
            await self._locate.close()


def _consume(future: asyncio.Future[_Connection]) -> None:
    if not future.cancelled():
        future.exception()


class Script:
    """A Lua script run by its SHA1 (EVALSHA), loaded on first NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def command(self, keys: Sequence[str], args: Sequence[Arg]) -> tuple[Arg, ...]:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    async def call(
        self,
        client: Client,
        keys: Sequence[str],
        args: Sequence[Arg],
        *,
        linger_s: float = 0.0,
        eager: bool = False,
    ) -> Any:
        (reply,) = await self.run(client, [self.command(keys, args)], linger_s=linger_s, eager=eager)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def run(
        self, client: Client, commands: Sequence[Command], *, linger_s: float = 0.0, eager: bool = False
    ) -> list[Any]:
        """Run a pipeline that contains this script's EVALSHAs; re-run the NOSCRIPT ones after loading."""
        replies = await client.submit(commands, linger_s=linger_s, eager=eager)
        missing = [i for i, r in enumerate(replies) if is_noscript(r)]
        if missing:
            await client.execute("SCRIPT", "LOAD", self.source)
            again = await client.pipeline([commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies


def is_noscript(reply: Any) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")
