"""Golden wire tests for the ``bedrock`` provider: the real ``openai`` and ``anthropic`` SDKs through a
live gateway to a loopback Bedrock Runtime that verifies every SigV4 signature.

Request bodies are asserted as Converse bodies on the wire (Bedrock Runtime API reference: Converse,
ConverseStream, InvokeModel); answers are Converse JSON and ConverseStream events in real AWS
event-stream framing, cut into odd-sized writes so that messages straddle reads.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from bedrock_upstream import (
    FakeBedrock,
    Received,
    aws_env,
    aws_error,
    converse_answer,
    event,
    exception,
    stream_response,
    text_stream,
)
from conftest import BUDGETS, KEY_ACME, Gateway, GatewayFactory
from starlette.responses import JSONResponse, Response

MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"
ROUTES = """
defaults:
  retry: {{attempts: {attempts}, backoff_initial_s: 0.01, backoff_max_s: 0.05}}
providers:
  aws: {{type: bedrock, region: us-east-1, base_url: "{url}"}}
models:
  claude-bedrock:
    provider: aws
    upstream: "{model}"
    price: {{input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3, cache_write_per_mtok: 3.75}}
  titan-embed:
    provider: aws
    upstream: "amazon.titan-embed-text-v2:0"
    price: {{input_per_mtok: 0.02, output_per_mtok: 0}}
  cohere-embed:
    provider: aws
    upstream: "cohere.embed-english-v3"
    price: {{input_per_mtok: 0.1, output_per_mtok: 0}}
"""
IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeBedrock]:
    aws_env(monkeypatch, tmp_path)
    fake = FakeBedrock().start()
    yield fake
    fake.stop()


def start(gateway_factory: GatewayFactory, upstream: FakeBedrock, attempts: int = 1) -> Gateway:
    routes = ROUTES.format(url=upstream.url, model=MODEL_ID, attempts=attempts)
    return gateway_factory(routes=routes, budgets=BUDGETS)


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)


def signed(upstream: FakeBedrock) -> list[Received]:
    """Every request the upstream got, each asserted correctly signed over the bytes received."""
    for got in upstream.received:
        assert got.signature_ok, got.problem
    return upstream.received


# --- text ------------------------------------------------------------------------------------------


def test_text_round_trip_openai_sdk(gateway_factory: GatewayFactory, upstream: FakeBedrock) -> None:
    usage = {"inputTokens": 10, "outputTokens": 3, "totalTokens": 19, "cacheReadInputTokens": 4}
    usage["cacheWriteInputTokens"] = 2
    upstream.script.append(lambda got: JSONResponse(converse_answer([{"text": "Hi there."}], usage=usage)))
    gw = start(gateway_factory, upstream)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="claude-bedrock",
        messages=[
            # a cache breakpoint, as Anthropic-minded clients mark one through the SDK's extra fields
            {
                "role": "system",
                "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            },  # type: ignore[list-item]
            {"role": "user", "content": "Hello"},
        ],
        max_tokens=50,
        temperature=0.2,
        stop=["END"],
        seed=7,  # Converse has no seed: dropped, not refused
    )
    completion = raw.parse()
    [got] = signed(upstream)
    assert got.raw_path == "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
    assert got.headers["content-type"] == "application/json"
    assert got.json == {
        "messages": [{"role": "user", "content": [{"text": "Hello"}]}],
        "system": [{"text": "Be brief."}, {"cachePoint": {"type": "default"}}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "stopSequences": ["END"]},
    }
    assert completion.choices[0].message.content == "Hi there."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL_ID  # the upstream name, as every adapter reports it
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (16, 3)
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 4
    # 10 fresh x $3 + 4 cache reads x $0.30 + 2 cache writes x $3.75 + 3 out x $15, per million tokens
    assert raw.headers["x-gateway-cost-usd"] == "0.0000837"


def test_streamed_text_openai_sdk(gateway_factory: GatewayFactory, upstream: FakeBedrock) -> None:
    frames = text_stream(["Hel", "lo ", "world"], stop="max_tokens")
    upstream.script.append(lambda got: stream_response(frames, chunk=7))
    gw = start(gateway_factory, upstream)
    stream = client(gw).chat.completions.create(
        model="claude-bedrock",
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    [got] = signed(upstream)
    assert got.action == "converse-stream"
    assert got.headers["accept"] == "application/vnd.amazon.eventstream"
    assert got.json == {"messages": [{"role": "user", "content": [{"text": "Say hello"}]}]}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello world"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (12, 4)


def test_anthropic_sdk_messages_streamed_and_not(
    gateway_factory: GatewayFactory, upstream: FakeBedrock
) -> None:
    usage = {"inputTokens": 10, "outputTokens": 3, "totalTokens": 19, "cacheReadInputTokens": 4}
    usage["cacheWriteInputTokens"] = 2
    upstream.script.append(lambda got: JSONResponse(converse_answer([{"text": "Bonjour."}], usage=usage)))
    upstream.script.append(lambda got: stream_response(text_stream(["Bon", "jour."], usage=usage), chunk=5))
    gw = start(gateway_factory, upstream)
    sdk = anthropic.Anthropic(base_url=gw.url, api_key=KEY_ACME, max_retries=0)
    raw = sdk.messages.with_raw_response.create(
        model="claude-bedrock",
        max_tokens=64,
        system="Answer in French.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    message = raw.parse()
    assert raw.headers["x-gateway-cost-usd"] == "0.0000837"  # 10 fresh, 4 read, 2 written, 3 out
    assert message.content[0].type == "text" and message.content[0].text == "Bonjour."
    assert message.stop_reason == "end_turn"
    # Bedrock's cache reads reach an Anthropic client under Anthropic's name. Cache writes do not: a
    # translated /v1/messages answer is rebuilt from the OpenAI body, which has no slot for them
    # (gateway/ingress/), so the 2 written tokens show as input (they are priced as writes all the same).
    counts = message.usage
    assert (counts.output_tokens, counts.cache_read_input_tokens) == (3, 4)
    assert counts.input_tokens + (counts.cache_creation_input_tokens or 0) == 12
    with sdk.messages.stream(
        model="claude-bedrock", max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == "Bonjour."
    assert (final.usage.output_tokens, final.usage.cache_read_input_tokens) == (3, 4)
    assert final.usage.input_tokens + (final.usage.cache_creation_input_tokens or 0) == 12
    first, second = signed(upstream)
    assert first.json == {
        "messages": [{"role": "user", "content": [{"text": "Hello"}]}],
        "system": [{"text": "Answer in French."}],
        "inferenceConfig": {"maxTokens": 64},
    }
    assert second.action == "converse-stream"
    assert second.json["messages"] == [{"role": "user", "content": [{"text": "Hello"}]}]


# --- tools -----------------------------------------------------------------------------------------


def tool_call_answer(got: Received) -> Response:
    use = {"toolUse": {"toolUseId": "tooluse_abc123", "name": "get_weather", "input": {"city": "Paris"}}}
    return JSONResponse(converse_answer([{"text": "Let me check."}, use], stop="tool_use"))


def test_tool_round_trip_openai_sdk(gateway_factory: GatewayFactory, upstream: FakeBedrock) -> None:
    upstream.script.append(tool_call_answer)
    upstream.script.append(lambda got: JSONResponse(converse_answer([{"text": "It is 21°C in Paris."}])))
    gw = start(gateway_factory, upstream)
    sdk = client(gw)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = sdk.chat.completions.create(
        model="claude-bedrock", messages=messages, tools=[WEATHER], tool_choice="required"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls or []
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "tooluse_abc123",
        "get_weather",
        {"city": "Paris"},
    )
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "21°C, sunny"},
    ]
    second = sdk.chat.completions.create(model="claude-bedrock", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "It is 21°C in Paris."
    one, two = signed(upstream)
    spec = {
        "toolSpec": {
            "name": "get_weather",
            "description": "Weather in a city",
            "inputSchema": {"json": WEATHER["function"]["parameters"]},
        }
    }
    assert one.json == {
        "messages": [{"role": "user", "content": [{"text": "Weather in Paris?"}]}],
        "toolConfig": {"tools": [spec], "toolChoice": {"any": {}}},
    }
    assert two.json == {
        "messages": [
            {"role": "user", "content": [{"text": "Weather in Paris?"}]},
            {
                "role": "assistant",
                "content": [
                    {"text": "Let me check."},
                    {
                        "toolUse": {
                            "toolUseId": "tooluse_abc123",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        }
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"toolResult": {"toolUseId": "tooluse_abc123", "content": [{"text": "21°C, sunny"}]}}
                ],
            },
        ],
        "toolConfig": {"tools": [spec]},
    }


def test_streamed_tool_call_openai_sdk(gateway_factory: GatewayFactory, upstream: FakeBedrock) -> None:
    frames = [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Checking."}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event(
            "contentBlockStart",
            {
                "contentBlockIndex": 1,
                "start": {"toolUse": {"toolUseId": "tooluse_s1", "name": "get_weather"}},
            },
        ),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city": '}}}),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Oslo"}'}}}),
        event("contentBlockStop", {"contentBlockIndex": 1}),
        event("messageStop", {"stopReason": "tool_use"}),
        event(
            "metadata", {"usage": {"inputTokens": 30, "outputTokens": 9, "totalTokens": 39}, "metrics": {}}
        ),
    ]
    upstream.script.append(lambda got: stream_response(frames, chunk=11))
    gw = start(gateway_factory, upstream)
    with client(gw).chat.completions.stream(
        model="claude-bedrock", messages=[{"role": "user", "content": "Oslo?"}], tools=[WEATHER]
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.message.content == "Checking."
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert (call.id, call.function.name, call.function.arguments) == (
        "tooluse_s1",
        "get_weather",
        '{"city": "Oslo"}',
    )
    signed(upstream)


def test_anthropic_sdk_tool_round_trip(gateway_factory: GatewayFactory, upstream: FakeBedrock) -> None:
    upstream.script.append(tool_call_answer)
    upstream.script.append(lambda got: JSONResponse(converse_answer([{"text": "21°C."}])))
    gw = start(gateway_factory, upstream)
    sdk = anthropic.Anthropic(base_url=gw.url, api_key=KEY_ACME, max_retries=0)
    tools: Any = [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": WEATHER["function"]["parameters"],
        }
    ]
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    message = sdk.messages.create(
        model="claude-bedrock",
        max_tokens=100,
        tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[question],
    )
    assert message.stop_reason == "tool_use"
    tool = next(b for b in message.content if b.type == "tool_use")
    assert (tool.id, tool.name, tool.input) == ("tooluse_abc123", "get_weather", {"city": "Paris"})
    result: Any = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "21°C"}],
    }
    answer = sdk.messages.create(
        model="claude-bedrock",
        max_tokens=100,
        tools=tools,
        messages=[question, {"role": "assistant", "content": message.content}, result],
    )
    assert answer.content[0].type == "text" and answer.content[0].text == "21°C."
    first, second = signed(upstream)
    assert first.json["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    assert first.json["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"
    assert second.json["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"text": "Let me check."},
                {
                    "toolUse": {
                        "toolUseId": "tooluse_abc123",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                },
            ],
        },
        {
            "role": "user",
            "content": [{"toolResult": {"toolUseId": "tooluse_abc123", "content": [{"text": "21°C"}]}}],
        },
    ]


# --- images and JSON -----------------------------------------------------------------------------


def test_image_input_openai_and_anthropic_sdks(
    gateway_factory: GatewayFactory, upstream: FakeBedrock
) -> None:
    upstream.default = lambda got: JSONResponse(converse_answer([{"text": "A tiny black square."}]))
    gw = start(gateway_factory, upstream)
    answer = client(gw).chat.completions.create(
        model="claude-bedrock",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}},
                ],
            }
        ],
    )
    assert answer.choices[0].message.content == "A tiny black square."
    sdk = anthropic.Anthropic(base_url=gw.url, api_key=KEY_ACME, max_retries=0)
    sdk.messages.create(
        model="claude-bedrock",
        max_tokens=20,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/jpeg", "data": IMAGE},
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    one, two = signed(upstream)
    assert one.json["messages"] == [
        {
            "role": "user",
            "content": [{"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": IMAGE}}}],
        }
    ]
    assert two.json["messages"][0]["content"] == [
        {"image": {"format": "jpeg", "source": {"bytes": IMAGE}}},
        {"text": "What is this?"},
    ]


def test_a_remote_image_url_is_a_clear_400(gateway_factory: GatewayFactory, upstream: FakeBedrock) -> None:
    gw = start(gateway_factory, upstream)
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(
            model="claude-bedrock",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}],
                }
            ],
        )
    assert "data: URL" in info.value.message and "messages[0].content[0].image_url.url" in info.value.message
    assert upstream.received == []


def test_json_schema_is_forced_through_a_tool(gateway_factory: GatewayFactory, upstream: FakeBedrock) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    use = {"toolUse": {"toolUseId": "tooluse_j", "name": "json_response", "input": {"city": "Lyon"}}}
    upstream.script.append(lambda got: JSONResponse(converse_answer([use], stop="tool_use")))
    frames = [
        event("messageStart", {"role": "assistant"}),
        event(
            "contentBlockStart",
            {
                "contentBlockIndex": 0,
                "start": {"toolUse": {"toolUseId": "tooluse_k", "name": "json_response"}},
            },
        ),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '{"city":'}}}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": ' "Nice"}'}}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 5, "outputTokens": 5, "totalTokens": 10}, "metrics": {}}),
    ]
    upstream.script.append(lambda got: stream_response(frames))
    gw = start(gateway_factory, upstream)
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    body = {
        "model": "claude-bedrock",
        "messages": [{"role": "user", "content": "A city?"}],
        "response_format": fmt,
    }
    answer = client(gw).chat.completions.create(**body)
    assert json.loads(answer.choices[0].message.content or "") == {"city": "Lyon"}
    assert answer.choices[0].finish_reason == "stop" and not answer.choices[0].message.tool_calls
    chunks = list(client(gw).chat.completions.create(**body, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == '{"city": "Nice"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    one, _ = signed(upstream)
    assert one.json["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "json_response",
                    "description": "Give the answer: its input is the response, in the required JSON shape.",
                    "inputSchema": {"json": schema},
                }
            }
        ],
        "toolChoice": {"tool": {"name": "json_response"}},
    }


# --- a stream cut mid-way --------------------------------------------------------------------------


def test_a_stream_cut_mid_way_ends_with_an_error_event(
    gateway_factory: GatewayFactory, upstream: FakeBedrock
) -> None:
    frames = text_stream(["one ", "two ", "three"])
    cut = frames[:3]  # messageStart and two deltas; the third delta arrives half written, then nothing
    upstream.default = lambda got: stream_response(cut, tail=frames[3][:9])
    gw = start(gateway_factory, upstream)
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client(gw).chat.completions.create(
            model="claude-bedrock", messages=[{"role": "user", "content": "Count"}], stream=True
        ):
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(received) == "one two "
    assert "ended early" in info.value.message
    sdk = anthropic.Anthropic(base_url=gw.url, api_key=KEY_ACME, max_retries=0)
    texts: list[str] = []
    with (
        pytest.raises(anthropic.APIError) as failed,
        sdk.messages.stream(
            model="claude-bedrock", max_tokens=20, messages=[{"role": "user", "content": "Count"}]
        ) as s,
    ):
        texts.extend(s.text_stream)
    assert "".join(texts) == "one two "
    assert "ended early" in str(failed.value)
    raw = httpx.post(
        gw.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {KEY_ACME}"},
        json={"model": "claude-bedrock", "messages": [{"role": "user", "content": "Count"}], "stream": True},
        timeout=10,
    ).text
    last = raw.strip().split("\n\n")[-1]
    assert last.startswith('data: {"error"') and "[DONE]" not in raw
    signed(upstream)


def test_an_in_stream_exception_event_ends_the_stream_with_its_error(
    gateway_factory: GatewayFactory, upstream: FakeBedrock
) -> None:
    frames = text_stream(["par", "tial"])[:3]
    frames.append(exception("throttlingException", "Too many tokens, please wait before trying again."))
    upstream.default = lambda got: stream_response(frames)
    gw = start(gateway_factory, upstream)
    raw = httpx.post(
        gw.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {KEY_ACME}"},
        json={"model": "claude-bedrock", "messages": [{"role": "user", "content": "Hi"}], "stream": True},
        timeout=10,
    ).text
    events = [json.loads(e[len("data: ") :]) for e in raw.strip().split("\n\n")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == "partial"
    assert "Too many tokens" in events[-1]["error"]["message"]
    assert events[-1]["error"]["type"] == "rate_limit_error"
    signed(upstream)


# --- errors ----------------------------------------------------------------------------------------

ERRORS = [
    # (Bedrock status, exception, client status, openai SDK error class)
    (400, "ValidationException", 400, openai.BadRequestError),
    (
        403,
        "AccessDeniedException",
        502,
        openai.InternalServerError,
    ),  # the operator's credentials, not the client's
    (404, "ResourceNotFoundException", 404, openai.NotFoundError),
    (500, "InternalServerException", 502, openai.InternalServerError),
    (503, "ServiceUnavailableException", 502, openai.InternalServerError),
    (408, "ModelTimeoutException", 502, openai.InternalServerError),
    (424, "ModelErrorException", 502, openai.InternalServerError),
]


@pytest.mark.parametrize(("status", "name", "client_status", "error"), ERRORS)
def test_error_statuses(
    gateway_factory: GatewayFactory,
    upstream: FakeBedrock,
    status: int,
    name: str,
    client_status: int,
    error: type[openai.APIStatusError],
) -> None:
    upstream.default = lambda got: aws_error(status, name, f"{name} says no")
    gw = start(gateway_factory, upstream)
    with pytest.raises(error) as info:
        client(gw).chat.completions.create(
            model="claude-bedrock", messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.status_code == client_status
    if client_status < 500:
        assert f"{name} says no" in info.value.message  # a 4xx is passed through as Bedrock said it
        assert info.value.code == name
    with pytest.raises(error):
        list(
            client(gw).chat.completions.create(
                model="claude-bedrock", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
        )
    assert len(signed(upstream)) == 2


def test_throttling_is_429_with_retry_timing_and_retried(
    gateway_factory: GatewayFactory, upstream: FakeBedrock
) -> None:
    upstream.default = lambda got: aws_error(
        429, "ThrottlingException", "Rate exceeded", {"retry-after": "7"}
    )
    gw = start(gateway_factory, upstream)
    with pytest.raises(openai.RateLimitError) as info:
        client(gw).chat.completions.create(
            model="claude-bedrock", messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.code == "upstream_rate_limited" and "Rate exceeded" in info.value.message
    # ModelNotReadyException is Bedrock's other 429; the gateway retries both before giving up.
    upstream.received.clear()
    upstream.default = None
    upstream.script += [
        lambda got: aws_error(429, "ModelNotReadyException", "Model is not ready"),
        lambda got: JSONResponse(converse_answer([{"text": "ready now"}])),
    ]
    gw2 = start(gateway_factory, upstream, attempts=2)
    answer = client(gw2).chat.completions.create(
        model="claude-bedrock", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.choices[0].message.content == "ready now"
    assert len(signed(upstream)) == 2


def test_a_prompt_too_long_is_context_length_exceeded(
    gateway_factory: GatewayFactory, upstream: FakeBedrock
) -> None:
    upstream.default = lambda got: aws_error(
        400, "ValidationException", "Input is too long for requested model."
    )
    gw = start(gateway_factory, upstream)
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(
            model="claude-bedrock", messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.code == "context_length_exceeded"


def test_anthropic_sdk_sees_bedrock_errors(gateway_factory: GatewayFactory, upstream: FakeBedrock) -> None:
    upstream.default = lambda got: aws_error(
        429, "ThrottlingException", "Rate exceeded", {"retry-after": "3"}
    )
    gw = start(gateway_factory, upstream)
    sdk = anthropic.Anthropic(base_url=gw.url, api_key=KEY_ACME, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as info:
        sdk.messages.create(
            model="claude-bedrock", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.response.headers["retry-after"] == "3"
    upstream.default = lambda got: aws_error(400, "ValidationException", "messages: blank text")
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.create(
            model="claude-bedrock", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    assert "blank text" in str(bad.value)


# --- embeddings ------------------------------------------------------------------------------------


def test_titan_and_cohere_embeddings(gateway_factory: GatewayFactory, upstream: FakeBedrock) -> None:
    def titan(got: Received) -> Response:
        text = got.json["inputText"]
        return JSONResponse(
            {"embedding": [float(len(text)), 0.5, -1.0], "inputTextTokenCount": len(text.split())}
        )

    def cohere(got: Received) -> Response:
        texts = got.json["texts"]
        return JSONResponse(
            {
                "id": "e1",
                "texts": texts,
                "embeddings": [[float(i), 2.0] for i in range(len(texts))],
                "response_type": "embeddings_floats",
            }
        )

    upstream.default = lambda got: titan(got) if "titan" in got.model else cohere(got)
    gw = start(gateway_factory, upstream)
    sdk = client(gw)
    # the SDK asks for base64 unless told otherwise, and decodes it: both forms are exercised
    titan_answer = sdk.embeddings.create(model="titan-embed", input=["one two", "three"], dimensions=256)
    assert [d.embedding for d in titan_answer.data] == [[7.0, 0.5, -1.0], [5.0, 0.5, -1.0]]
    assert titan_answer.usage.prompt_tokens == 3
    floats = sdk.embeddings.create(
        model="cohere-embed",
        input="query text",
        encoding_format="float",
        extra_body={"input_type": "search_query"},
    )
    assert floats.data[0].embedding == [0.0, 2.0]
    titan_bodies = sorted(json.dumps(g.json) for g in signed(upstream) if "titan" in g.model)
    assert titan_bodies == sorted(
        json.dumps({"inputText": t, "dimensions": 256}) for t in ["one two", "three"]
    )
    [cohere_got] = [g for g in upstream.received if "cohere" in g.model]
    assert cohere_got.raw_path == "/model/cohere.embed-english-v3/invoke"
    assert cohere_got.json == {"texts": ["query text"], "input_type": "search_query"}
    raw = base64.b64decode(
        sdk.embeddings.with_raw_response.create(model="titan-embed", input="ab").http_response.json()["data"][
            0
        ]["embedding"]
    )
    assert struct.unpack("<3f", raw) == (2.0, 0.5, -1.0)


def test_embeddings_of_other_models_are_refused(
    gateway_factory: GatewayFactory, upstream: FakeBedrock
) -> None:
    gw = start(gateway_factory, upstream)
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).embeddings.create(model="claude-bedrock", input="x")
    assert "amazon.titan-embed-*" in info.value.message
    assert upstream.received == []
