"""Store fixtures: a real redis-server for the session, and a ``store`` fixture over both stores."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis
from redis_server import RedisServer

from gateway.store import GatewayStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def pytest_plugin_registered(plugin: object) -> None:
    """Give the module name ``conftest`` back to tests/conftest.py.

    Test directories have no ``__init__.py``, so pytest imports every conftest.py as the module
    ``conftest``; importing this one displaced tests/conftest.py, which other test modules import by
    that name (``from conftest import KEY_ACME``). This hook is historic: pytest replays it for the
    plugins registered before this file, the root conftest among them, which puts it back.
    """
    if isinstance(plugin, ModuleType) and getattr(plugin, "__file__", None) == str(ROOT_CONFTEST):
        sys.modules["conftest"] = plugin


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    """The session's Redis, emptied for this test."""
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    return redis_url


@pytest.fixture
def redis_servers() -> Iterator[Callable[[], RedisServer]]:
    """Start extra servers that a test may stop and restart; all are stopped at its end."""
    started: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer().start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[GatewayStore]:
    """Each contract test runs once per store; Redis is only started when a Redis case runs."""
    if request.param == "memory":
        made: GatewayStore = MemoryStore()
    else:
        # a generous deadline: 200 concurrent calls on a loaded CI box must not trip it
        made = RedisStore(request.getfixturevalue("clean_redis"), timeout_s=2.0)
    yield made
    await made.close()
