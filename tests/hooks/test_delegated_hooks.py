"""A request made with a delegation token hands its hooks that same token, whichever secret of a
rotation signed it, and is logged with its parent request."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from conftest import BUDGETS, GatewayFactory, free_port
from hookenv import ADMIN_KEY, access_lines, routes_yaml
from plugin_sidecar import Sidecar
from upstreams import FakeOpenAI

from gateway.delegation import SECRET_ENV, Delegation, mint

NEW, OLD = "n" * 40, "o" * 40


def test_a_delegated_request_hands_its_hooks_the_same_token_during_a_rotation(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    monkeypatch.setenv(SECRET_ENV, f"{NEW},{OLD}")  # NEW signs, OLD still verifies
    side = Sidecar(free_port()).start()
    try:
        upstream = FakeOpenAI()
        gw = gateway_factory(
            routes_yaml(side, free_port()), BUDGETS, transport=upstream.transport, admin_key=ADMIN_KEY
        )
        token = mint(OLD.encode(), Delegation("acme", "acme-1", "req_parent_9", int(time.time() + 60)))
        r = httpx.post(
            gw.base_url + "/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {token}", "x-gateway-task": "one"},
        )
        assert r.status_code == 200, r.text
        pre = side.calls()[0]["body"]
        assert (pre["tenant"], pre["key_id"], pre["role"]) == ("acme", "acme-1", "user")
        assert pre["delegation"]["token"] == token  # never a new one
        (line,) = access_lines(caplog, 1)
        assert (line["parent_request_id"], line["tenant"], line["key_id"]) == (
            "req_parent_9",
            "acme",
            "acme-1",
        )
    finally:
        side.stop()
