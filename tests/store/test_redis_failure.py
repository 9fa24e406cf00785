"""Redis going away: calls fail fast with StoreUnavailableError, and the store recovers by itself."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable

import pytest
from redis_server import RedisServer

from gateway.store.base import Ask, ScopeLimits, Settlement, StoreUnavailableError
from gateway.store.redis import RedisStore, _unavailable
from gateway.store.resp import ReplyError

pytestmark = pytest.mark.redis

T0 = 1_700_000_000.0
SCOPE = ScopeLimits("t", rpm=1_000, budget_nano=10**9)


def ask(request_id: str, now: float = T0) -> Ask:
    return Ask(request_id, "acme", (SCOPE,), tokens=10, cost_nano=100, now=now, lease_s=60.0)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


async def test_nothing_listening_fails_within_a_second() -> None:
    store = RedisStore(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=0.25)
    try:
        for call in (
            lambda: store.admit(ask("r1")),
            lambda: store.settle(Settlement("r1", "acme", (SCOPE,), 10, 10, 100, T0)),
            lambda: store.spend("acme", SCOPE, now=T0),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await call()
            assert time.monotonic() - started < 1.0
        assert await store.ping() is False
    finally:
        await store.close()


async def test_stop_then_restart_on_the_same_port(redis_servers: Callable[[], RedisServer]) -> None:
    server = redis_servers()
    store = RedisStore(server.url, timeout_s=0.25)
    try:
        assert (await store.admit(ask("before"))).admitted

        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.admit(ask("during"))
        assert time.monotonic() - started < 1.0
        assert await store.ping() is False

        server.start()  # same port, empty: the scripts must be loaded again, by the store itself
        assert (await store.admit(ask("after"))).admitted
        assert await store.ping() is True
        spend = await store.spend("acme", SCOPE, now=T0)
        assert spend.reserved_nano == 100  # only "after": the restarted server kept nothing
    finally:
        await store.close()


async def test_a_frozen_server_times_out(redis_servers: Callable[[], RedisServer]) -> None:
    server = redis_servers()
    assert server.proc is not None
    store = RedisStore(server.url, timeout_s=0.25)
    try:
        assert (await store.admit(ask("before"))).admitted
        os.kill(server.proc.pid, signal.SIGSTOP)  # accepts bytes, answers nothing
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await store.admit(ask("frozen"))
            assert time.monotonic() - started < 1.0
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert (await store.admit(ask("thawed"))).admitted
        # The frozen call's script ran once the server woke, though its caller was told it failed:
        # released by its request id (the gateway's settler does this), it holds nothing at once;
        # left alone, it would be held until its lease expires.
        assert (await store.spend("acme", SCOPE, now=T0)).reserved_nano == 300
        assert await store.settle(Settlement.release(ask("frozen"), now=T0)) == {"t": 0}
        assert (await store.spend("acme", SCOPE, now=T0)).reserved_nano == 200
        assert (await store.spend("acme", SCOPE, now=T0 + 61)).reserved_nano == 0
    finally:
        await store.close()


async def test_a_primary_turned_replica_is_unavailable_not_an_error(
    redis_servers: Callable[[], RedisServer],
) -> None:
    """After a failover the old primary refuses writes (READONLY) until clients move on: admission and
    settlement say the store is unavailable (so ``store_failure`` decides), not that the gateway broke."""
    server = redis_servers()
    store = RedisStore(server.url, timeout_s=0.25)
    admin = RedisStore(server.url, timeout_s=0.25)
    try:
        assert (await store.admit(ask("before"))).admitted
        await admin._redis.execute("REPLICAOF", "127.0.0.1", str(closed_port()))
        with pytest.raises(StoreUnavailableError, match="read-only"):
            await store.admit(ask("after"))
        with pytest.raises(StoreUnavailableError, match="read-only"):
            await store.settle(Settlement("before", "acme", (SCOPE,), 10, 10, 100, T0))
        await admin._redis.execute("REPLICAOF", "NO", "ONE")
        assert (await store.admit(ask("again"))).admitted
    finally:
        await store.close()
        await admin.close()


@pytest.mark.parametrize(
    "reply",
    [
        "LOADING Redis is loading the dataset in memory",
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    ],
)
def test_a_server_that_will_serve_again_soon_is_unavailable_not_an_error(reply: str) -> None:
    """A restarted Redis answers LOADING while it reads its AOF (seen in the kill-and-restart chaos
    test): money calls must be retried (settlements) or refused with 503, never a 500."""
    assert isinstance(_unavailable(ReplyError(reply)), StoreUnavailableError)
    # Any other refusal too (issue 13, finding 4: never a 500): the text says what Redis said.
    assert "redis refused: ERR unknown command" in str(_unavailable(ReplyError("ERR unknown command")))
