"""Golden wire tests for ``type: gemini``: the real openai and anthropic SDKs against a live gateway whose
upstream is a recording Gemini API fake (``gemini_fake``). Request bodies are asserted as they arrive on
the wire; answers are the Gemini API reference's shapes, streams in its SSE framing."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
from conftest import BUDGETS, KEY_ACME, GatewayFactory
from gemini_fake import USAGE, FakeGemini, generate, google_error, sse, text_stream
from pydantic import BaseModel
from upstreams import GatedStream, HostRouter

ROUTES = """
providers:
  gm: {type: gemini, base_url: "http://gemini.test/v1beta", api_key: gm-key}
defaults:
  retry: {attempts: 1}
models:
  gemini-flash:
    provider: gm
    upstream: gemini-2.5-flash
    price: {input_per_mtok: 0.30, output_per_mtok: 2.50, cached_input_per_mtok: 0.075}
  gemini-embed:
    provider: gm
    upstream: gemini-embedding-001
    price: {input_per_mtok: 0.15, output_per_mtok: 0}
"""
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
SIGNATURE = "CiQBVKhc7l1R3sK0eJt0m9Qy6bWm0a1b2c3d4e5f6g7h8i9j0k=="
PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture
def fake() -> FakeGemini:
    return FakeGemini()


@pytest.fixture
def gw(gateway_factory: GatewayFactory, fake: FakeGemini) -> Any:
    return gateway_factory(routes=ROUTES, budgets=BUDGETS, transport=HostRouter(gemini_test=fake.handle))


@pytest.fixture
def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)


def weather_answer(body: dict[str, Any]) -> httpx.Response:
    """A function call first; once the result is in, the answer built from it."""
    last = body["contents"][-1]["parts"]
    results = [p["functionResponse"] for p in last if "functionResponse" in p]
    if results:
        result = results[0]["response"]
        temp = result["temp_c"] if "temp_c" in result else result["output"]
        return httpx.Response(200, json=generate([{"text": f"It is {temp}°C."}]))
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIGNATURE}
    return httpx.Response(200, json=generate([call]))


# --- text -------------------------------------------------------------------------------------------


def test_text_golden_request_answer_usage_and_cost(client: openai.OpenAI, fake: FakeGemini) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-flash",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        seed=7,
    )
    [request] = fake.requests
    assert str(request.url) == "http://gemini.test/v1beta/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == "gm-key" and "authorization" not in request.headers
    assert json.loads(request.content) == {
        "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "stopSequences": ["END"],
            "maxOutputTokens": 50,
            "temperature": 0.2,
            "topP": 0.9,
            "seed": 7,
        },
    }
    answer = raw.parse()
    assert answer.choices[0].message.content == "Bonjour !"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.id == "chatcmpl-mN8uaOzKGZ-vqtsP4s2xQQ" and answer.model == "gemini-2.5-flash"
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    # thinking tokens are output; promptTokenCount already holds the cached part
    assert (usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens) == (
        21,
        23,
        4,
    )
    # (21 - 4) × 0.30 + 4 × 0.075 + (7 + 16) × 2.50, per million tokens
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == Decimal("0.0000629")


def test_text_stream_in_gemini_sse_framing(client: openai.OpenAI, fake: FakeGemini) -> None:
    stream = client.chat.completions.create(
        model="gemini-flash",
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    [request] = fake.requests
    assert request.url.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert request.url.params["alt"] == "sse"
    assert json.loads(request.content) == {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Bonjour !"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert len({c.id for c in chunks}) == 1
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (21, 23)


def test_the_stream_ends_with_the_finish_reason_even_if_the_upstream_keeps_the_body_open(
    gw: Any, fake: FakeGemini
) -> None:
    gate = threading.Event()  # never set before the client is done: the body stays open till then
    held = GatedStream(text_stream(["Bon", "jour", " !"]), b"", gate)
    fake.answer_stream = lambda body: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=held
    )
    api = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0, timeout=10)
    try:
        chunks = list(
            api.chat.completions.create(
                model="gemini-flash", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
        )
    finally:
        gate.set()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Bonjour !"
    assert held.closed  # released at once, not left to the server


def test_a_stream_cut_mid_way_ends_with_an_error_event(
    client: openai.OpenAI, gw: Any, fake: FakeGemini
) -> None:
    fake.stream_body = text_stream(["Bon", "jour"], finish=False)  # closed before any finishReason
    stream = client.chat.completions.create(
        model="gemini-flash", messages=[{"role": "user", "content": "Hello"}], stream=True
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "Bonjour"
    assert "ended early" in caught.value.message
    # billed on the gateway's count of the text that went out, not on an early event's zero output
    assert output_tokens(gw) > 0


def output_tokens(gw: Any) -> float:
    """gemini-flash's ``gateway_tokens_total{kind="output"}`` once settlement (after the answer) set it."""
    deadline = time.monotonic() + 5
    while True:
        for line in httpx.get(gw.url + "/metrics").text.splitlines():
            if (
                line.startswith("gateway_tokens_total{")
                and 'model="gemini-flash"' in line
                and 'kind="output"' in line
            ):
                return float(line.split()[-1])
        if time.monotonic() > deadline:
            return 0.0
        time.sleep(0.02)


def test_an_error_event_inside_the_stream_ends_it_with_an_error(
    client: openai.OpenAI, fake: FakeGemini
) -> None:
    head = text_stream(["Bon"], finish=False)
    fake.stream_body = head + sse(google_error(503, "UNAVAILABLE", "The model is overloaded."))
    stream = client.chat.completions.create(
        model="gemini-flash", messages=[{"role": "user", "content": "Hello"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert "The model is overloaded." in caught.value.message


def test_responses_api_over_gemini(client: openai.OpenAI, fake: FakeGemini) -> None:
    response = client.responses.create(model="gemini-flash", input="Hello", instructions="Be brief.")
    assert response.output_text == "Bonjour !" and response.status == "completed"
    assert fake.json()["systemInstruction"] == {"parts": [{"text": "Be brief."}]}


# --- tools ------------------------------------------------------------------------------------------


def test_tool_round_trip(client: openai.OpenAI, fake: FakeGemini) -> None:
    fake.answer = weather_answer
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="gemini-flash", messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_") and len(call.id) <= 40  # portable to OpenAI upstreams
    assert fake.json()["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather in a city",
                    "parameters": {
                        "type": "OBJECT",
                        "properties": {"city": {"type": "STRING", "description": "City name"}},
                        "required": ["city"],
                    },
                }
            ]
        }
    ]

    messages.append(choice.message.model_dump(exclude_none=True))  # as agent loops send it back
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'})
    second = client.chat.completions.create(model="gemini-flash", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "It is 21°C."
    assert fake.json()["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": SIGNATURE,
                }
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}],
        },
    ]


def test_tool_history_without_signature_and_plain_text_results(
    client: openai.OpenAI, fake: FakeGemini
) -> None:
    """A history written by the client (no thought signature) gets Google's documented bypass value,
    a result that is not a JSON object goes under ``output``; tool_choice → functionCallingConfig."""
    fake.answer = weather_answer
    call = {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny, 21"},
    ]
    client.chat.completions.create(
        model="gemini-flash",
        messages=messages,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    sent = fake.json()
    assert sent["contents"][1]["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    assert sent["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"output": "sunny, 21"}}}
    ]
    assert sent["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }


def test_a_tool_result_for_an_unknown_call_is_a_clear_400(client: openai.OpenAI, fake: FakeGemini) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gemini-flash",
            messages=[
                {"role": "user", "content": "Hi"},
                {"role": "tool", "tool_call_id": "call_x", "content": "1"},
            ],
        )
    assert (
        "messages[1].tool_call_id" in caught.value.message and "matches tool results" in caught.value.message
    )
    assert fake.requests == []


def test_streamed_tool_call(client: openai.OpenAI, fake: FakeGemini) -> None:
    part = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIGNATURE}
    fake.stream_body = sse(generate([part]))
    chunks = list(
        client.chat.completions.create(
            model="gemini-flash",
            messages=[{"role": "user", "content": "Weather?"}],
            tools=[WEATHER],
            stream=True,
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    [delta] = deltas
    assert delta.index == 0 and delta.id and delta.id.startswith("call_")
    assert delta.function is not None and delta.function.name == "get_weather"
    assert json.loads(delta.function.arguments or "") == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


# --- images and JSON --------------------------------------------------------------------------------


def test_image_input(client: openai.OpenAI, fake: FakeGemini) -> None:
    content: Any = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/cat.webp"}},
    ]
    client.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": content}])
    assert fake.json()["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "gs://bucket/cat.webp"}},
    ]


def test_an_http_image_url_is_refused_with_a_400(client: openai.OpenAI, fake: FakeGemini) -> None:
    content: Any = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": content}])
    assert "messages[0].content[0].image_url.url" in caught.value.message
    assert "data:" in caught.value.message
    assert fake.requests == []


class Forecast(BaseModel):
    city: str
    celsius: int
    sunny: bool | None
    days: list[str]


def test_json_schema_output(client: openai.OpenAI, fake: FakeGemini) -> None:
    reply = {"city": "Paris", "celsius": 21, "sunny": True, "days": ["mon"]}
    fake.answer = lambda body: httpx.Response(200, json=generate([{"text": json.dumps(reply)}]))
    parsed = client.chat.completions.parse(
        model="gemini-flash", messages=[{"role": "user", "content": "Forecast"}], response_format=Forecast
    )
    assert parsed.choices[0].message.parsed == Forecast(**reply)
    config = fake.json()["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == {
        "type": "OBJECT",
        "title": "Forecast",
        "properties": {
            "city": {"type": "STRING", "title": "City"},
            "celsius": {"type": "INTEGER", "title": "Celsius"},
            "sunny": {"type": "BOOLEAN", "title": "Sunny", "nullable": True},
            "days": {"type": "ARRAY", "title": "Days", "items": {"type": "STRING"}},
        },
        "propertyOrdering": ["city", "celsius", "sunny", "days"],
        "required": ["city", "celsius", "sunny", "days"],
    }


class Place(BaseModel):
    name: str


class Trip(BaseModel):
    start: Place
    stops: list[Place]


def test_nested_models_refs_are_inlined(client: openai.OpenAI, fake: FakeGemini) -> None:
    """The SDK sends nested models as $defs/$ref, which Gemini refuses: they arrive inlined."""
    reply = {"start": {"name": "Paris"}, "stops": [{"name": "Lyon"}]}
    fake.answer = lambda body: httpx.Response(200, json=generate([{"text": json.dumps(reply)}]))
    parsed = client.chat.completions.parse(
        model="gemini-flash", messages=[{"role": "user", "content": "Trip"}], response_format=Trip
    )
    assert parsed.choices[0].message.parsed == Trip(**reply)
    schema = fake.json()["generationConfig"]["responseSchema"]
    place = {
        "type": "OBJECT",
        "title": "Place",
        "properties": {"name": {"type": "STRING", "title": "Name"}},
        "required": ["name"],
    }
    assert schema["properties"] == {
        "start": place,
        "stops": {"type": "ARRAY", "title": "Stops", "items": place},
    }
    assert "$ref" not in json.dumps(schema) and "$defs" not in json.dumps(schema)


def test_json_object_output(client: openai.OpenAI, fake: FakeGemini) -> None:
    client.chat.completions.create(
        model="gemini-flash",
        messages=[{"role": "user", "content": "JSON"}],
        response_format={"type": "json_object"},
    )
    assert fake.json()["generationConfig"] == {"responseMimeType": "application/json"}


@pytest.mark.parametrize(
    ("finish", "expected"),
    [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("STOP", "stop"),
    ],
)
def test_stop_reasons(client: openai.OpenAI, fake: FakeGemini, finish: str, expected: str) -> None:
    fake.answer = lambda body: httpx.Response(200, json=generate([{"text": "x"}], finish=finish))
    answer = client.chat.completions.create(
        model="gemini-flash", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.choices[0].finish_reason == expected


# --- errors -----------------------------------------------------------------------------------------

RETRY_INFO = [
    {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaMetric": "generate_requests"}],
    },
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"},
]
KEY_INVALID = [
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
    }
]

# (upstream status, Google status, details, headers) -> (client status, SDK error, retry-after)
ERRORS = [
    (429, "RESOURCE_EXHAUSTED", RETRY_INFO, {}, 429, openai.RateLimitError, "7"),
    (429, "RESOURCE_EXHAUSTED", None, {"retry-after": "3"}, 429, openai.RateLimitError, "3"),
    (400, "INVALID_ARGUMENT", None, {}, 400, openai.BadRequestError, None),
    (404, "NOT_FOUND", None, {}, 404, openai.NotFoundError, None),
    # the operator's Google credentials failing is not the client's key: 502 upstream_auth_error
    (401, "UNAUTHENTICATED", None, {}, 502, openai.InternalServerError, None),
    (403, "PERMISSION_DENIED", None, {}, 502, openai.InternalServerError, None),
    (400, "INVALID_ARGUMENT", KEY_INVALID, {}, 502, openai.InternalServerError, None),
    (500, "INTERNAL", None, {}, 502, openai.InternalServerError, None),
    (503, "UNAVAILABLE", None, {}, 502, openai.InternalServerError, None),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("up", "google", "details", "headers", "status", "kind", "retry"), ERRORS)
def test_documented_errors(
    client: openai.OpenAI,
    fake: FakeGemini,
    stream: bool,
    up: int,
    google: str,
    details: Any,
    headers: dict[str, str],
    status: int,
    kind: type[openai.APIStatusError],
    retry: str | None,
) -> None:
    message = f"Gemini says {google}."
    fake.fail_with = httpx.Response(up, json=google_error(up, google, message, details), headers=headers)
    with pytest.raises(kind) as caught:
        answer = client.chat.completions.create(
            model="gemini-flash", messages=[{"role": "user", "content": "Hi"}], stream=stream
        )
        if stream:
            list(answer)  # type: ignore[arg-type]
    err = caught.value
    assert err.status_code == status
    if status < 500:
        assert message in err.message  # passed through as the upstream said it
    if status == 502 and up in (401, 403, 400):
        assert isinstance(err.body, dict) and err.body.get("code") == "upstream_auth_error"
    assert err.response.headers.get("retry-after") == retry


# --- embeddings -------------------------------------------------------------------------------------


def test_embeddings_floats_and_base64(client: openai.OpenAI, fake: FakeGemini) -> None:
    result = client.embeddings.create(model="gemini-embed", input=["hi", "hello"], dimensions=3)
    assert [d.embedding for d in result.data] == [[0.5, -0.25, 2.0], [0.5, -0.25, 5.0]]  # base64 by default
    assert result.usage.prompt_tokens > 0
    assert fake.json() == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "hi"}]},
                "outputDimensionality": 3,
            },
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "hello"}]},
                "outputDimensionality": 3,
            },
        ]
    }
    assert fake.requests[-1].url.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    floats = client.embeddings.create(model="gemini-embed", input="hi", encoding_format="float")
    assert floats.data[0].embedding == [0.5, -0.25, 2.0]
    packed = httpx.post(
        str(client.base_url) + "embeddings",
        json={"model": "gemini-embed", "input": "hi", "encoding_format": "base64"},
        headers={"authorization": f"Bearer {KEY_ACME}"},
    ).json()["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(packed)) == (0.5, -0.25, 2.0)


# --- /v1/messages through the anthropic SDK ---------------------------------------------------------


def messages_client(gw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=KEY_ACME, max_retries=0)


def test_messages_text_and_stream(gw: Any, fake: FakeGemini) -> None:
    api = messages_client(gw)
    message = api.messages.create(
        model="gemini-flash",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert [b.text for b in message.content if b.type == "text"] == ["Bonjour !"]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == USAGE["candidatesTokenCount"] + USAGE["thoughtsTokenCount"]
    sent = fake.json()
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["generationConfig"]["maxOutputTokens"] == 64
    with api.messages.stream(
        model="gemini-flash", max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Bonjour !" and final.stop_reason == "end_turn"


def test_messages_tool_round_trip(gw: Any, fake: FakeGemini) -> None:
    fake.answer = weather_answer
    api = messages_client(gw)
    tool: Any = {
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
    }
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = api.messages.create(model="gemini-flash", max_tokens=64, tools=[tool], messages=messages)
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": '{"temp_c": 21}'}],
        }
    )
    second = api.messages.create(model="gemini-flash", max_tokens=64, tools=[tool], messages=messages)
    assert [b.text for b in second.content if b.type == "text"] == ["It is 21°C."]
    assert fake.json()["contents"][2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}],
    }


def test_messages_stream_cut_ends_with_an_error_event(gw: Any, fake: FakeGemini) -> None:
    fake.stream_body = text_stream(["Bon", "jour"], finish=False)
    api = messages_client(gw)
    with (
        pytest.raises(anthropic.APIError) as caught,
        api.messages.stream(
            model="gemini-flash", max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass
    assert "ended early" in str(caught.value)


def test_messages_errors_use_anthropics_envelope(gw: Any, fake: FakeGemini) -> None:
    fake.fail_with = httpx.Response(429, json=google_error(429, "RESOURCE_EXHAUSTED", "Quota.", RETRY_INFO))
    with pytest.raises(anthropic.RateLimitError) as caught:
        messages_client(gw).messages.create(
            model="gemini-flash", max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
        )
    assert caught.value.response.headers["retry-after"] == "7"
    assert "Quota." in str(caught.value)


def test_messages_image_input(gw: Any, fake: FakeGemini) -> None:
    image: Any = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    content: Any = [{"type": "text", "text": "What is this?"}, image]
    messages_client(gw).messages.create(
        model="gemini-flash", max_tokens=64, messages=[{"role": "user", "content": content}]
    )
    assert fake.json()["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
    ]


@pytest.mark.parametrize(
    ("up", "google", "kind", "status"),
    [
        (400, "INVALID_ARGUMENT", anthropic.BadRequestError, 400),
        (404, "NOT_FOUND", anthropic.NotFoundError, 404),
        (401, "UNAUTHENTICATED", anthropic.InternalServerError, 502),
        (403, "PERMISSION_DENIED", anthropic.InternalServerError, 502),
        (500, "INTERNAL", anthropic.InternalServerError, 502),
        (503, "UNAVAILABLE", anthropic.InternalServerError, 502),
    ],
)
def test_messages_documented_errors(
    gw: Any, fake: FakeGemini, up: int, google: str, kind: type[anthropic.APIStatusError], status: int
) -> None:
    fake.fail_with = httpx.Response(up, json=google_error(up, google, f"Gemini says {google}."))
    with pytest.raises(kind) as caught:
        messages_client(gw).messages.create(
            model="gemini-flash", max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
        )
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    if status < 500:
        assert f"Gemini says {google}." in body["error"]["message"]
