"""Hooks on /v1/responses: the pre hook sees the chat form of the Responses request, its change reaches
the upstream, and the client still gets a Response object (real sidecar process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import BUDGETS, GatewayFactory, free_port
from hookenv import ADMIN_KEY, SECRET, Hooked, routes_yaml
from plugin_sidecar import Sidecar
from upstreams import FakeOpenAI

from gateway.delegation import SECRET_ENV
from gateway.ingress.responses import to_chat_request


@pytest.fixture(scope="module")
def sidecar() -> Iterator[Sidecar]:
    side = Sidecar(free_port()).start()
    yield side
    side.stop()


@pytest.fixture
def hooked(gateway_factory: GatewayFactory, sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch) -> Hooked:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    sidecar.reset()
    upstream = FakeOpenAI()
    gateway = gateway_factory(
        routes_yaml(sidecar, free_port()), BUDGETS, transport=upstream.transport, admin_key=ADMIN_KEY
    )
    return Hooked(gateway, sidecar, upstream)


ASK: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "instructions": "Be brief.",
    "input": "My card is 4111 1111 1111 1111",
    "max_output_tokens": 64,
    "store": False,
}


def test_a_pre_hook_sees_the_chat_form_and_its_change_reaches_the_upstream(hooked: Hooked) -> None:
    view = to_chat_request(ASK)[0]
    changed = {**view, "messages": [view["messages"][0], {"role": "user", "content": "My card is [CARD]"}]}
    hooked.side.set("a", "pre", answer={"action": "modify", "request": changed})
    response = hooked.client("one").responses.create(**ASK)
    assert response.object == "response" and response.output_text == "Hello there!"
    seen = hooked.side.calls()[0]["body"]
    assert seen["endpoint"] == "/v1/responses" and seen["request"]["messages"] == view["messages"]
    sent = hooked.upstream.json()
    assert sent["messages"] == changed["messages"] and sent["max_tokens"] == 64
