"""The OpenAI surface, driven by the real openai SDK (sync and async) through a live gateway."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from conftest import KEY_ACME, KEY_GLOBEX, GatewayFactory
from upstreams import FakeOpenAI


@pytest.fixture
def upstream() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def gw(gateway_factory: GatewayFactory, upstream: FakeOpenAI):
    return gateway_factory(transport=upstream.transport)


def client(gw, key: str = KEY_ACME) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def test_chat_sync_routes_alias_and_rewrites_model(gw, upstream: FakeOpenAI) -> None:
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_body={"custom_field": {"a": 1}}
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello there!"
    assert completion.usage is not None and completion.usage.total_tokens == 15
    sent = upstream.json()
    assert sent["model"] == "gpt-4o-mini"
    assert sent["custom_field"] == {"a": 1}, "unknown fields pass through"
    assert raw.headers["x-gateway-route"] == "alias"
    assert raw.headers["x-gateway-model"] == "gpt-4o-mini"
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-gateway-attempts"] == "1"
    # 12 * 0.15 + 3 * 0.60 per million tokens, exactly
    assert raw.headers["x-gateway-cost-usd"] == "0.0000036"


async def test_chat_async(gw) -> None:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0) as c:
        completion = await c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.choices[0].message.content == "Hello there!"


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream(gw, upstream: FakeOpenAI, include_usage: bool) -> None:
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True, **kwargs
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there!"
    assert len({c.id for c in chunks}) == 1
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 3
    else:
        assert usage_chunks == []
    # The gateway always asks the upstream for usage so it can bill the stream.
    assert upstream.json()["stream_options"] == {"include_usage": True}


async def test_chat_stream_async(gw) -> None:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0) as c:
        stream = await c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    assert text == "Hello there!"


def test_stream_wire_format(gw) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = httpx.post(
        gw.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEY_ACME}"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    for frame in r.text.split("\n\n")[:-1]:
        assert frame.startswith("data: ") and "\nevent:" not in frame


def test_tools_round_trip(gw, upstream: FakeOpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    c = client(gw)
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris?"}]
    first = c.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert upstream.json()["tools"] == tools
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = c.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    assert second.choices[0].message.content == "Hello there!"
    assert upstream.json()["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}


def test_response_format_json_schema_passes_through(gw, upstream: FakeOpenAI) -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"answer": {"type": "integer"}},
                "required": ["answer"],
            },
        },
    }
    completion = client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "6*7"}], response_format=fmt
    )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": 42}
    assert upstream.json()["response_format"] == fmt


def test_legacy_completions(gw, upstream: FakeOpenAI) -> None:
    completion = client(gw).completions.create(model="gpt-4o-mini", prompt="hello")
    assert completion.choices[0].text == " world"
    assert upstream.requests[-1].url.path == "/v1/completions"


def test_embeddings_float_and_base64(gw, upstream: FakeOpenAI) -> None:
    c = client(gw)
    default = c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])  # SDK asks base64
    assert [d.embedding for d in default.data] == [[0.5, -0.25, 0.125]] * 2
    assert "encoding_format" not in upstream.json(), "the gateway asks upstreams for floats"
    floats = c.embeddings.create(model="text-embedding-3-small", input="a", encoding_format="float")
    assert floats.data[0].embedding == [0.5, -0.25, 0.125]
    assert upstream.json()["encoding_format"] == "float"


def test_models_lists_only_allowed(gw) -> None:
    acme = sorted(m.id for m in client(gw).models.list())
    assert acme == ["gpt-4o", "gpt-4o-mini", "mock-chat", "text-embedding-3-small"]
    globex = sorted(m.id for m in client(gw, KEY_GLOBEX).models.list())
    assert globex == ["mock-chat"]
    assert client(gw).models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        client(gw, KEY_GLOBEX).models.retrieve("gpt-4o-mini")


def test_health_and_ready(gw) -> None:
    assert httpx.get(gw.url + "/healthz").status_code == 200
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_mock_provider_answers_without_keys(gw) -> None:
    completion = client(gw).chat.completions.create(
        model="mock-chat", messages=[{"role": "user", "content": "ping"}]
    )
    assert completion.choices[0].message.content == "Mock reply: ping"
    chunks = list(
        client(gw).chat.completions.create(
            model="mock-chat",
            messages=[{"role": "user", "content": "ping"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Mock reply: ping"
    assert chunks[-1].usage is not None
