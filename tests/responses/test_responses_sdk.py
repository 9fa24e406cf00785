"""`POST /v1/responses` with the real openai SDK against the live gateway: mock, a chat-only OpenAI-type
upstream and an Anthropic upstream, each behind a fake that validates what it receives."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from conftest import BUDGETS, KEY_ACME, ROUTES, GatewayFactory
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseIncompleteEvent,
    ResponseOutputItemAddedEvent,
    ResponseTextDeltaEvent,
)
from pydantic import BaseModel
from upstreams import FakeAnthropic, FakeOpenAI, HostRouter

ROUTES_ALL = ROUTES.replace(
    "  local: {type: mock}",
    "  local: {type: mock}\n"
    "  anth: {type: anthropic, base_url: 'http://anthropic.test', api_key: sk-ant-upstream}",
).replace(
    "models:\n",
    "models:\n  claude-haiku: {provider: anth, upstream: claude-3-5-haiku-latest,"
    " price: {input_per_mtok: 1, output_per_mtok: 5}}\n",
)
MODELS = ["mock-chat", "gpt-4o-mini", "claude-haiku"]
RESPONSES_ONLY = {"input", "instructions", "text", "max_output_tokens", "previous_response_id", "store"}


def check_chat(body: dict[str, Any]) -> None:
    """What a chat-completions server would refuse: Responses fields, bad roles, orphan tool results."""
    assert not RESPONSES_ONLY & body.keys(), body.keys()
    assert isinstance(body["messages"], list) and body["messages"]
    called: set[str] = set()
    for m in body["messages"]:
        assert m["role"] in ("system", "user", "assistant", "tool"), m
        if m["role"] == "tool":
            assert m["tool_call_id"] in called and isinstance(m["content"], str)
        for call in m.get("tool_calls") or []:
            assert call["type"] == "function" and isinstance(call["function"]["arguments"], str)
            called.add(call["id"])
        if isinstance(m.get("content"), list):
            for part in m["content"]:
                assert part["type"] in ("text", "image_url"), part
    for tool in body.get("tools") or []:
        assert tool["type"] == "function" and isinstance(tool["function"]["parameters"], dict)


def check_messages(body: dict[str, Any]) -> None:
    """What Anthropic's Messages API would refuse."""
    assert isinstance(body["max_tokens"], int) and body["messages"]
    assert body["messages"][0]["role"] == "user"
    for m in body["messages"]:
        assert m["role"] in ("user", "assistant"), m


class Upstreams:
    def __init__(self) -> None:
        self.openai, self.anthropic = FakeOpenAI(), FakeAnthropic()
        self.chat_bodies: list[dict[str, Any]] = []
        self.messages_bodies: list[dict[str, Any]] = []

    async def openai_handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions", request.url.path  # chat only: no /responses
        body = json.loads(request.content)
        check_chat(body)
        self.chat_bodies.append(body)
        return await self.openai.handle(request)

    async def anthropic_handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        check_messages(body)
        self.messages_bodies.append(body)
        return await self.anthropic.handle(request)


@pytest.fixture
def ups() -> Upstreams:
    return Upstreams()


@pytest.fixture
def gw(gateway_factory: GatewayFactory, ups: Upstreams):
    transport = HostRouter(upstream_test=ups.openai_handle, anthropic_test=ups.anthropic_handle)
    return gateway_factory(routes=ROUTES_ALL, budgets=BUDGETS, transport=transport)


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_create_text_with_instructions(gw, ups: Upstreams, model: str) -> None:
    raw = client(gw).responses.with_raw_response.create(
        model=model, input="Salut", instructions="Be brief.", temperature=0.2, metadata={"k": "v"}
    )
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.error is None
    assert response.model == model and response.instructions == "Be brief."
    assert response.metadata == {"k": "v"} and response.temperature == 0.2
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text"
    expected = {"mock-chat": "Mock reply: Salut", "gpt-4o-mini": "Hello there!", "claude-haiku": "Bonjour !"}
    assert response.output_text == expected[model]
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert float(raw.headers["x-gateway-cost-usd"]) > 0
    if model == "gpt-4o-mini":
        sent = ups.chat_bodies[-1]
        assert sent["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Salut"},
        ]
        assert sent["temperature"] == 0.2
    if model == "claude-haiku":
        assert ups.messages_bodies[-1]["system"] == "Be brief."


@pytest.mark.parametrize("model", MODELS)
def test_create_items_with_image_and_history(gw, ups: Upstreams, model: str) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    response = client(gw).responses.create(
        model=model,
        max_output_tokens=200,
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": image, "detail": "low"},
                ],
            },
        ],
    )
    assert response.status == "completed" and response.max_output_tokens == 200
    if model == "gpt-4o-mini":
        sent = ups.chat_bodies[-1]
        assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
        assert sent["messages"][3]["content"][1] == {
            "type": "image_url",
            "image_url": {"url": image, "detail": "low"},
        }
        assert sent["max_tokens"] == 200
    if model == "claude-haiku":
        sent = ups.messages_bodies[-1]
        assert sent["system"] == "Answer in French." and sent["max_tokens"] == 200
        assert sent["messages"][2]["content"][1]["type"] == "image"


class Weather(BaseModel):
    city: str
    celsius: int
    sunny: bool


def test_parse_with_pydantic_model_against_mock(gw) -> None:
    parsed = client(gw).responses.parse(model="mock-chat", input="Weather in Paris?", text_format=Weather)
    assert isinstance(parsed.output_parsed, Weather)
    assert parsed.text.format.type == "json_schema"


def test_parse_sends_json_schema_to_a_chat_upstream(gw, ups: Upstreams) -> None:
    ups.openai.words = ["{}"]
    client(gw).responses.create(
        model="gpt-4o-mini",
        input="x",
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
    )
    sent = ups.chat_bodies[-1]["response_format"]
    assert sent == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
    }


WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.mark.parametrize("model", MODELS)
def test_function_tool_round_trip_with_items(gw, ups: Upstreams, model: str) -> None:
    api = client(gw)
    first = api.responses.create(model=model, input="Weather in Paris?", tools=[WEATHER_TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].id.startswith("fc_")
    arguments = json.loads(calls[0].arguments)
    if model == "mock-chat":  # schema-valid arguments
        assert set(arguments) == {"city", "days"} and isinstance(arguments["city"], str)
        assert isinstance(arguments["days"], int) and arguments["days"] >= 1
    assert first.tools[0].name == "get_weather"
    second = api.responses.create(
        model=model,
        tools=[WEATHER_TOOL],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            calls[0].model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"celsius": 21}'},
        ],
    )
    assert second.status == "completed"
    if model != "claude-haiku":  # the Anthropic fake calls the tool whenever tools are offered
        assert second.output[0].type == "message"
    if model == "gpt-4o-mini":
        sent = ups.chat_bodies[-1]["messages"]
        assert sent[1]["tool_calls"][0]["id"] == calls[0].call_id
        assert sent[2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": '{"celsius": 21}'}
    if model == "claude-haiku":
        sent = ups.messages_bodies[-1]["messages"]
        assert sent[1]["content"][0]["type"] == "tool_use"
        assert sent[2]["content"][0]["type"] == "tool_result"


@pytest.mark.parametrize("model", MODELS)
def test_stream_with_sdk_helper(gw, model: str) -> None:
    with client(gw).responses.stream(model=model, input="Salut") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert isinstance(events[0], ResponseCreatedEvent)
    assert isinstance(events[-1], ResponseCompletedEvent)
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))
    deltas = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    assert deltas == final.output_text and deltas
    assert [e.type for e in events[:4]] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert [e.type for e in events[-4:]] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.usage is not None and final.usage.output_tokens > 0


def test_stream_true_tool_call_against_mock(gw) -> None:
    stream = client(gw).responses.create(
        model="mock-chat", input="Weather?", tools=[WEATHER_TOOL], stream=True
    )
    events = list(stream)
    added = [e for e in events if isinstance(e, ResponseOutputItemAddedEvent)]
    assert added[0].item.type == "function_call"
    done = [e for e in events if isinstance(e, ResponseFunctionCallArgumentsDoneEvent)]
    assert set(json.loads(done[0].arguments)) == {"city", "days"}
    assert isinstance(events[-1], ResponseCompletedEvent)
    assert events[-1].response.output[0].type == "function_call"


def test_max_output_tokens_gives_incomplete(gw) -> None:
    api = client(gw)
    long_input = "one two three four five six seven eight nine ten"
    response = api.responses.create(model="mock-chat", input=long_input, max_output_tokens=3)
    assert response.status == "incomplete"
    assert (
        response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    )
    assert response.usage is not None and response.usage.output_tokens <= 3
    events = list(api.responses.create(model="mock-chat", input=long_input, max_output_tokens=3, stream=True))
    assert isinstance(events[-1], ResponseIncompleteEvent)
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 3}, "input"),
        ({"input": []}, "input"),
        ({"input": ["x"]}, "input[0]"),
        ({"input": [{"role": "user", "content": "a"}, {"type": "web_search_call"}]}, "input[1].type"),
        ({"input": [{"role": "robot", "content": "a"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input[0].content[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": "x", "instructions": 5}, "instructions"),
        ({"input": "x", "max_output_tokens": "10"}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "top_p": True}, "top_p"),
        ({"input": "x", "metadata": {"a": 1}}, "metadata.a"),
        ({"input": "x", "store": "yes"}, "store"),
        ({"input": "x", "stream": 1}, "stream"),
        ({"input": "x", "parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"input": "x", "user": 7}, "user"),
        ({"input": "x", "previous_response_id": 7}, "previous_response_id"),
        ({"input": "x", "truncation": "sometimes"}, "truncation"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": "maybe"}, "tool_choice"),
    ],
)
def test_bad_input_is_400_with_param(gw, ups: Upstreams, body: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).post("/responses", body={"model": "gpt-4o-mini", **body}, cast_to=httpx.Response)
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert error["type"] == "invalid_request_error" and param in error["message"]
    assert ups.chat_bodies == []  # nothing reached the upstream


def test_missing_model_and_reviewer_keys_are_refused(gw) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).post("/responses", body={"input": "x"}, cast_to=httpx.Response)
    assert info.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.base_url, api_key="sk-wrong", max_retries=0).responses.create(
            model="mock-chat", input="x"
        )


def test_a_stream_broken_after_its_first_event_ends_with_error_and_failed(gw, ups: Upstreams) -> None:
    ups.openai.break_streams = True
    api = client(gw)
    events = list(api.responses.create(model="gpt-4o-mini", input="Salut", stream=True))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert any(isinstance(e, ResponseTextDeltaEvent) for e in events)  # it had started
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # a failed turn is not kept: it cannot be continued
    with pytest.raises(openai.BadRequestError):
        api.responses.create(model="mock-chat", input="y", previous_response_id=failed.id)


REVIEWER_KEY = "sk-test-reviewer"


def test_a_reviewer_key_is_refused(gateway_factory: GatewayFactory) -> None:
    import hashlib

    digest = hashlib.sha256(REVIEWER_KEY.encode()).hexdigest()
    budgets = BUDGETS + f'      - {{id: rev-1, sha256: "{digest}", role: reviewer}}\n'
    gw = gateway_factory(routes=ROUTES_ALL, budgets=budgets)
    api = openai.OpenAI(base_url=gw.base_url, api_key=REVIEWER_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        api.responses.create(model="mock-chat", input="x")
    assert client(gw).responses.create(model="mock-chat", input="x").status == "completed"
