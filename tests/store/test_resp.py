"""The lean Redis client (gateway/store/resp.py) against a real redis-server and misbehaving sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis as sync_redis
from redis_server import RedisServer

from gateway.store.resp import Endpoint, ReplyError, RespClient, Script


@pytest.fixture
async def client(clean_redis: str) -> AsyncIterator[RespClient]:
    c = RespClient(clean_redis, timeout_s=2.0)
    yield c
    await c.close()


def test_urls_are_parsed() -> None:
    assert Endpoint.from_url("redis://127.0.0.1:6390/3") == Endpoint("127.0.0.1", 6390, db=3)
    ep = Endpoint.from_url("rediss://app:p%40ss@cache.internal/2")
    assert (ep.host, ep.port, ep.db, ep.username, ep.password, ep.tls) == (
        "cache.internal",
        6379,
        2,
        "app",
        "p@ss",
        True,
    )
    assert Endpoint.from_url("redis://:secret@h?db=5").password == "secret"
    assert Endpoint.from_url("redis://:secret@h?db=5").db == 5
    unix = Endpoint.from_url("unix:///run/redis.sock?db=1")
    assert (unix.path, unix.db) == ("/run/redis.sock", 1)
    with pytest.raises(ValueError, match="scheme"):
        Endpoint.from_url("http://h:1")


async def test_commands_and_pipelines_answer_in_order(client: RespClient) -> None:
    assert await client.execute("PING") == b"PONG"
    assert await client.execute("SET", "k", b"v\x00\xff", "EX", 60) == b"OK"
    replies = await client.pipeline([("GET", "k"), ("INCRBY", "n", 5), ("GET", "missing"), ("TTL", "k")])
    assert replies[:3] == [b"v\x00\xff", 5, None]
    assert 0 < replies[3] <= 60


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(client: RespClient) -> None:
    async def one(i: int) -> bytes:
        await client.execute("SET", f"k{i}", i)
        value: bytes = await client.execute("GET", f"k{i}")
        return value

    values = await asyncio.gather(*(one(i) for i in range(500)))
    assert values == [str(i).encode() for i in range(500)]
    assert (
        await client.execute("CLIENT", "ID")
        and len((await client.execute("CLIENT", "LIST")).splitlines()) == 1
    )


async def test_error_replies_raise_for_one_command_and_are_returned_in_pipelines(client: RespClient) -> None:
    await client.execute("SET", "s", "text")
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        await client.execute("LPUSH", "s", "x")
    replies = await client.pipeline([("INCR", "s"), ("PING",)])
    assert isinstance(replies[0], ReplyError) and replies[1] == b"PONG"
    assert await client.execute("PING") == b"PONG"  # the connection is still in step


async def test_scripts_load_themselves_after_a_flush(client: RespClient) -> None:
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await script.call(client, ["c"], [2]) == 2
    await client.execute("SCRIPT", "FLUSH")
    assert await script.call(client, ["c"], [3]) == 5  # NOSCRIPT: loaded, then run exactly once
    replies = await script.run(client, [("GET", "c"), script.command(["c"], [1])])
    assert replies == [b"5", 6]


async def test_auth_and_db_come_from_the_url() -> None:
    server = RedisServer("--requirepass", "s3cret").start()
    try:
        port = server.port
        good = RespClient(f"redis://:s3cret@127.0.0.1:{port}/4", timeout_s=2.0)
        await good.execute("SET", "where", "db4")
        other = RespClient(f"redis://:s3cret@127.0.0.1:{port}/0", timeout_s=2.0)
        assert await other.execute("GET", "where") is None
        assert await good.execute("GET", "where") == b"db4"
        bad = RespClient(f"redis://:wrong@127.0.0.1:{port}/0", timeout_s=2.0)
        with pytest.raises(ConnectionError, match="refused the connection setup"):
            await bad.execute("PING")
        for c in (good, other, bad):
            await c.close()
    finally:
        server.stop()


async def _silent_server(on_accept: Callable[[socket.socket], None]) -> tuple[int, Callable[[], None]]:
    """A loopback server that accepts and then does what ``on_accept`` says (here: never answers)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    accepted: list[socket.socket] = []

    async def accept() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            accepted.append(conn)
            on_accept(conn)

    task = asyncio.create_task(accept())

    def stop() -> None:
        task.cancel()
        for s in [*accepted, listener]:
            s.close()

    return listener.getsockname()[1], stop


async def test_a_silent_server_times_out_and_the_connection_is_replaced() -> None:
    sockets: list[socket.socket] = []
    port, stop = await _silent_server(sockets.append)
    try:
        c = RespClient(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await c.execute("PING")
        assert loop.time() - started < 1.0
        with pytest.raises(TimeoutError):
            await c.execute("PING")
        await asyncio.sleep(0.05)
        assert len(sockets) == 2  # the silent connection was dropped and a new one dialled
        await c.close()
    finally:
        stop()


async def test_refused_and_lost_connections_raise_connection_errors(
    redis_servers: Callable[[], RedisServer],
) -> None:
    server = redis_servers()
    c = RespClient(server.url, timeout_s=1.0)
    assert await c.execute("PING") == b"PONG"
    blocked = asyncio.ensure_future(c.execute("BLPOP", "never", 0))  # held open by the server
    await asyncio.sleep(0.05)
    server.stop()
    with pytest.raises(ConnectionError):
        await blocked
    with pytest.raises(OSError):  # refused: nothing listens now
        await c.execute("PING")
    server.start()
    assert await c.execute("PING") == b"PONG"  # redialled by itself
    await c.close()


async def test_lingering_commands_ride_along_after_the_urgent_ones(client: RespClient) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    lazy = client.submit([("SET", "k", "new")], linger_s=5.0)
    # the urgent GET shares the lingering SET's write and runs first, so it still sees no value
    assert await client.execute("GET", "k") is None
    assert await lazy == [b"OK"]
    assert loop.time() - started < 1.0  # it left with the GET, not after its 5 s linger
    assert await client.execute("GET", "k") == b"new"


async def test_lingering_commands_leave_at_once_on_an_idle_connection(client: RespClient) -> None:
    await client.execute("PING")
    loop = asyncio.get_running_loop()
    started = loop.time()
    alone = client.submit([("INCR", "n")], linger_s=5.0)
    assert await alone == [1]  # no reply was awaited: it did not wait for company
    assert loop.time() - started < 1.0


async def test_lingering_commands_wait_while_replies_are_awaited(client: RespClient) -> None:
    await client.execute("PING")
    loop = asyncio.get_running_loop()
    started = loop.time()
    busy = client.submit([("BLPOP", "nothing-here", "0.3")])  # Redis answers it in 0.3 s
    await asyncio.sleep(0.02)  # written, its reply awaited
    lazy = client.submit([("INCR", "n")], linger_s=0.1)
    await asyncio.sleep(0.05)
    assert not lazy.done()
    assert await lazy == [1]  # left when its linger ran out, answered after the BLPOP
    assert await busy == [None]
    assert loop.time() - started >= 0.3
    slow = client.submit([("BLPOP", "nothing-here", "0.1")])
    await asyncio.sleep(0.02)
    late = client.submit([("INCR", "n")], linger_s=5.0)  # waits for company (or for the replies)
    assert await client.execute("PING") == b"PONG"  # the company: both leave in one write
    assert await late == [2]  # nowhere near its 5 s
    assert await slow == [None]
    assert loop.time() - started < 2.0


async def test_an_abandoned_submit_does_not_put_the_replies_out_of_step(client: RespClient) -> None:
    await client.execute("PING")  # connected: submit writes at once (before that, it is a task)
    gone = client.submit([("SET", "a", "1"), ("GET", "a")])
    gone.cancel()
    assert await client.execute("GET", "a") == b"1"  # ran anyway; its replies were dropped in order
    assert await client.pipeline([("INCR", "b"), ("INCR", "b")]) == [1, 2]


async def test_a_lingering_command_leaves_once_the_awaited_replies_are_in(client: RespClient) -> None:
    await client.execute("PING")
    loop = asyncio.get_running_loop()
    busy = client.submit([("BLPOP", "nothing-here", "0.1")])
    await asyncio.sleep(0.02)
    lazy = client.submit([("INCR", "idle-n")], linger_s=5.0)
    assert await busy == [None]
    started = loop.time()
    assert await lazy == [1]  # the connection went idle: it left then, not after 5 s
    assert loop.time() - started < 1.0


async def test_a_command_sent_now_is_written_before_submit_returns(clean_redis: str) -> None:
    client = RespClient(clean_redis, timeout_s=2.0)
    await client.execute("PING")  # connected
    other = sync_redis.Redis.from_url(clean_redis)
    try:
        sent = client.submit([("SET", "now-key", "v")], now=True)
        queued = client.submit([("SET", "turn-key", "v")])  # leaves at the end of this loop turn
        time.sleep(0.05)  # noqa: ASYNC251 (blocking on purpose: this loop turn must not end)
        assert other.get("now-key") == b"v"
        assert other.get("turn-key") is None
        assert await sent == [b"OK"]
        assert await queued == [b"OK"]
    finally:
        other.close()
        await client.close()


async def test_an_ahead_command_waits_for_company_and_goes_first(client: RespClient) -> None:
    await client.execute("PING")  # connected and idle
    loop = asyncio.get_running_loop()
    put = client.submit([("SET", "ahead-k", "v")], linger_s=5.0, ahead=True)
    await asyncio.sleep(0.05)
    assert not put.done()  # idle, yet it waits: the next write takes it along
    started = loop.time()
    assert await client.execute("GET", "ahead-k") == b"v"  # written first, so the GET sees it
    assert await put == [b"OK"]
    assert loop.time() - started < 1.0


async def test_an_ahead_command_alone_leaves_when_its_linger_is_up(client: RespClient) -> None:
    await client.execute("PING")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await client.submit([("INCR", "ahead-n")], linger_s=0.1, ahead=True) == [1]
    assert 0.09 <= loop.time() - started < 1.0


async def test_an_eager_command_is_written_at_once_only_on_an_idle_connection(clean_redis: str) -> None:
    client = RespClient(clean_redis, timeout_s=2.0)
    await client.execute("PING")  # connected, nothing awaited
    other = sync_redis.Redis.from_url(clean_redis)
    try:
        queued = client.submit([("SET", "eager-1", "a")])  # would leave at the end of the turn...
        sent = client.submit([("SET", "eager-2", "b")], eager=True)  # ...but goes now, with this one
        time.sleep(0.05)  # noqa: ASYNC251 (blocking on purpose: this loop turn must not end)
        assert other.mget("eager-1", "eager-2") == [b"a", b"b"]
        assert await queued == [b"OK"] and await sent == [b"OK"]
        awaited = client.submit([("GET", "eager-1")], now=True)  # written; its reply not yet read
        joined = client.submit([("SET", "eager-3", "c")], eager=True)  # pipelines with the turn instead
        time.sleep(0.05)  # noqa: ASYNC251
        assert other.get("eager-3") is None  # Redis is free, so it was not written
        assert await awaited == [b"a"]
        assert await joined == [b"OK"]
    finally:
        other.close()
        await client.close()
