"""Fixtures: a ``ResponseStore`` over a real redis-server and over this process."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis
from redis_server import RedisServer

from gateway.responses_api.local import LocalResponseStore
from gateway.responses_api.shared import RedisResponseStore
from gateway.responses_api.store import ResponseStore
from gateway.store.redis import RedisStore

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def pytest_plugin_registered(plugin: object) -> None:
    """Give the module name ``conftest`` back to tests/conftest.py (see tests/store/conftest.py)."""
    if isinstance(plugin, ModuleType) and getattr(plugin, "__file__", None) == str(ROOT_CONFTEST):
        sys.modules["conftest"] = plugin


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.fixture(params=["local", "redis"])
async def responses(request: pytest.FixtureRequest) -> AsyncIterator[ResponseStore]:
    if request.param == "local":
        yield LocalResponseStore()
        return
    url: str = request.getfixturevalue("redis_url")
    with redis.Redis.from_url(url) as client:
        client.flushall()
    store = RedisStore(url)
    yield RedisResponseStore(store)
    await store.close()
