"""Guard fixtures: the guard app over ASGI in front of a loopback fake gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from guard_helpers import TOKEN, FakeGateway, GuardApp, LoopbackServer

from plugins.guard.app import build
from plugins.sdk import PluginSettings


@pytest.fixture
def fake_gateway() -> Iterator[tuple[FakeGateway, str]]:
    fake = FakeGateway()
    server = LoopbackServer(fake.app()).start()
    try:
        yield fake, server.url
    finally:
        server.stop()


@pytest.fixture
async def guard_app(fake_gateway: tuple[FakeGateway, str]) -> AsyncIterator[GuardApp]:
    settings = PluginSettings(token=TOKEN, gateway_url=fake_gateway[1], data_dir=None, redis_url=None)
    app, guard = build(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://guard") as client:
        yield GuardApp(client, guard, app)
    await guard.aclose()
