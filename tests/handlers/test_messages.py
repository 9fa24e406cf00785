"""`POST /v1/messages` with the real anthropic SDK, against OpenAI-type and Anthropic-type upstreams."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from conftest import BUDGETS, KEY_ACME, ROUTES, GatewayFactory
from upstreams import FakeAnthropic, FakeOpenAI, HostRouter

ROUTES_BOTH = ROUTES.replace(
    "  local: {type: mock}",
    "  local: {type: mock}\n"
    "  anth: {type: anthropic, base_url: 'http://anthropic.test', api_key: sk-ant-upstream}",
).replace("models:\n", "models:\n  claude-haiku: {provider: anth, upstream: claude-3-5-haiku-latest}\n")


@pytest.fixture
def fakes() -> tuple[FakeOpenAI, FakeAnthropic]:
    return FakeOpenAI(), FakeAnthropic()


@pytest.fixture
def gw(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeAnthropic]):
    openai_up, anthropic_up = fakes
    transport = HostRouter(upstream_test=openai_up.handle, anthropic_test=anthropic_up.handle)
    return gateway_factory(routes=ROUTES_BOTH, budgets=BUDGETS, transport=transport)


def client(gw, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=KEY_ACME, max_retries=0, **kw)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
def test_messages_non_streaming(gw, fakes, model: str) -> None:
    message = client(gw).messages.create(
        model=model, max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "Salut"}]
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text in ("Hello there!", "Bonjour !")
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens in (3, 5)
    openai_up, anthropic_up = fakes
    if model == "claude-haiku":
        sent = anthropic_up.json()
        assert sent["system"] == "Be brief." and sent["model"] == "claude-3-5-haiku-latest"
        headers = anthropic_up.requests[-1].headers
        assert headers["x-api-key"] == "sk-ant-upstream" and "authorization" not in headers
        assert headers["anthropic-version"]
    else:
        sent = openai_up.json()
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
        assert sent["max_tokens"] == 64


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
def test_messages_streaming(gw, model: str) -> None:
    with client(gw).messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "Salut"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text in ("Hello there!", "Bonjour !")
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens in (3, 5)


def test_messages_tools_against_anthropic_upstream(gw) -> None:
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]
    message = client(gw).messages.create(
        model="claude-haiku", max_tokens=64, tools=tools, messages=[{"role": "user", "content": "Paris?"}]
    )
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    assert message.stop_reason == "tool_use"


def test_messages_accepts_x_api_key_and_renders_anthropic_errors(gw) -> None:
    body = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    ok = httpx.post(
        gw.url + "/v1/messages", json=body, headers={"x-api-key": KEY_ACME, "anthropic-version": "2023-06-01"}
    )
    assert ok.status_code == 200 and ok.json()["type"] == "message"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gw.url, api_key="sk-wrong", max_retries=0).messages.create(
            model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(anthropic.NotFoundError):
        client(gw).messages.create(model="nope", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    bad = httpx.post(
        gw.url + "/v1/messages",
        json={"model": "gpt-4o-mini", "messages": []},
        headers={"x-api-key": KEY_ACME},
    )
    assert bad.status_code == 400
    assert bad.json()["type"] == "error" and bad.json()["error"]["type"] == "invalid_request_error"
