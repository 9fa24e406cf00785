"""Gateway headers and client auth never reach the upstream; responses carry the gateway's headers."""

from __future__ import annotations

import openai
import pytest
from conftest import KEY_ACME, GatewayFactory
from upstreams import FakeOpenAI


def test_gateway_headers_and_client_auth_are_not_forwarded(gateway_factory: GatewayFactory) -> None:
    upstream = FakeOpenAI()
    gw = gateway_factory(transport=upstream.transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    extra = {
        "x-gateway-task": "t",
        "x-gateway-trace": "trace-1",
        "x-gateway-cache": "skip",
        "X-Gateway-Other": "1",
    }
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers=extra
    )
    sent = upstream.requests[-1].headers
    assert not [h for h in sent if h.lower().startswith("x-gateway")]
    assert sent["authorization"] == "Bearer sk-upstream-secret"
    assert KEY_ACME not in str(sent.raw)
    assert not [h for h in sent if h.lower().startswith("x-stainless")]
    assert raw.headers["x-request-id"] and raw.headers["x-gateway-route"] == "default"
    assert raw.headers["x-gateway-model"] == "gpt-4o-mini"
    assert raw.headers["x-gateway-cache"] == "off"  # the default route has no cache: off, asked or not
    stream_raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True, extra_headers=extra
    )
    assert stream_raw.headers["x-gateway-model"] == "gpt-4o-mini"
    assert list(stream_raw.parse())
    assert not [h for h in upstream.requests[-1].headers if h.lower().startswith("x-gateway")]


def test_secrets_never_reach_the_logs(gateway_factory: GatewayFactory, caplog) -> None:  # type: ignore[no-untyped-def]
    import logging

    caplog.set_level(logging.DEBUG)
    upstream = FakeOpenAI()
    gw = gateway_factory(transport=upstream.transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "secret plan"}])
    list(
        c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    with_wrong_key = openai.OpenAI(base_url=gw.base_url, api_key="sk-wrong-secret-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        with_wrong_key.models.list()
    import time

    time.sleep(0.2)  # access lines are written after the response
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert '"tenant":"acme"' in text, "the access log line was written"
    for secret in (KEY_ACME, "sk-upstream-secret", "sk-wrong-secret-123", "secret plan"):
        assert secret not in text
