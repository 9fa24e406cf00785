"""Issue 15's acceptance list, run against every provider kind: `mock`, an OpenAI-type upstream that
speaks Responses (`openai_responses`, and Azure's `azure_responses`), one that only speaks chat
(`openai`) and `anthropic`.

The openai SDK, unchanged, drives `responses.create` (text, items, images, instructions),
`responses.parse` with a Pydantic model, a function tool round trip through `previous_response_id`,
`responses.stream` and `stream=True`, `retrieve`, `input_items.list` and `delete`. Each loopback fake
validates what it receives and answers a `json_schema` request with JSON built from the schema it got,
so `output_parsed` proves the schema made it through every translation.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from conftest import BUDGETS, KEY_ACME, ROUTES, GatewayFactory
from openai.types.responses import ResponseCompletedEvent, ResponseCreatedEvent, ResponseTextDeltaEvent
from pydantic import BaseModel
from test_native_responses_upstream import FakeResponses, _message
from test_native_responses_upstream import response as native_response
from test_responses_sdk import WEATHER_TOOL, check_chat, check_messages
from upstreams import FakeAnthropic, FakeOpenAI, HostRouter, chat_body

from gateway.providers.anthropic_translate import _JSON_SCHEMA_INSTRUCTION
from gateway.providers.mock_schema import sample

ROUTES_EVERY = ROUTES.replace(
    "  local: {type: mock}",
    "  local: {type: mock}\n"
    "  anth: {type: anthropic, base_url: 'http://anthropic.test', api_key: sk-ant-upstream}\n"
    "  native: {type: openai_responses, base_url: 'http://native.test/v1', api_key: sk-native}\n"
    "  az: {type: azure_responses, base_url: 'https://res.azure.test', api_key: az-key}",
).replace(
    "models:\n",
    "models:\n"
    "  claude-haiku: {provider: anth, upstream: claude-3-5-haiku-latest,"
    " price: {input_per_mtok: 1, output_per_mtok: 5}}\n"
    "  gpt-native: {provider: native, upstream: gpt-4.1, price: {input_per_mtok: 1, output_per_mtok: 2}}\n"
    "  gpt-azure: {provider: az, upstream: my-deploy, price: {input_per_mtok: 1, output_per_mtok: 2}}\n",
)
MODELS = ["mock-chat", "gpt-native", "gpt-azure", "gpt-4o-mini", "claude-haiku"]
NATIVE = ("gpt-native", "gpt-azure")
IMAGE = "data:image/png;base64,iVBORw0KGgo="


class Chat(FakeOpenAI):
    """Chat completions only; a `json_schema` request is answered from the schema it carries."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions", request.url.path
        body = json.loads(request.content)
        check_chat(body)
        self.bodies.append(body)
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema" and not body.get("stream"):
            content = json.dumps(sample(fmt["json_schema"]["schema"]))
            return httpx.Response(200, json=chat_body(body["model"], content=content))
        return await super().handle(request)


class Anthropic(FakeAnthropic):
    """Messages API; the schema arrives as a system instruction, and a tool result gets a text answer."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        check_messages(body)
        self.bodies.append(body)
        system = body.get("system") or ""
        text = system if isinstance(system, str) else "".join(b["text"] for b in system)
        last = body["messages"][-1]["content"]
        answered = isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)
        if body.get("stream") or (_JSON_SCHEMA_INSTRUCTION not in text and not answered):
            return await super().handle(request)
        reply = "It is 21°C."
        if _JSON_SCHEMA_INSTRUCTION in text:
            reply = json.dumps(sample(json.loads(text.split(_JSON_SCHEMA_INSTRUCTION, 1)[1])))
        message = {
            "id": "msg_up_3",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 5},
        }
        return httpx.Response(200, json=message)


class Native(FakeResponses):
    """`/v1/responses` only, validated with the SDK's types; `json_schema` answered from the schema."""

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        fmt = (body.get("text") or {}).get("format") or {}
        if fmt.get("type") != "json_schema" or body.get("stream"):
            return await super().handle(request)
        answer = await super().handle(request)  # validates and records
        assert answer.status_code == 200
        self.bodies[-1] = body
        return httpx.Response(200, json=native_response(body, [_message(json.dumps(sample(fmt["schema"])))]))


class Azure(Native):
    """Azure's v1 surface: `/openai/v1/responses`, `api-key`, the deployment as `model`, no api-version."""

    path = "/openai/v1/responses"
    auth = ("api-key", "az-key")

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert "authorization" not in request.headers and not request.url.query
        assert json.loads(request.content)["model"] == "my-deploy"
        return await super().handle(request)


class Upstreams:
    def __init__(self) -> None:
        self.chat, self.anthropic, self.native, self.azure = Chat(), Anthropic(), Native(), Azure()

    def last(self, model: str) -> dict[str, Any] | None:
        bodies = {"gpt-4o-mini": self.chat.bodies, "claude-haiku": self.anthropic.bodies}
        bodies.update({"gpt-native": self.native.bodies, "gpt-azure": self.azure.bodies})
        found = bodies.get(model)
        return found[-1] if found else None


@pytest.fixture
def ups() -> Upstreams:
    return Upstreams()


@pytest.fixture
def api(gateway_factory: GatewayFactory, ups: Upstreams) -> openai.OpenAI:
    transport = HostRouter(
        upstream_test=ups.chat.handle,
        anthropic_test=ups.anthropic.handle,
        native_test=ups.native.handle,
        **{"res.azure.test": ups.azure.handle},
    )
    gw = gateway_factory(routes=ROUTES_EVERY, budgets=BUDGETS, transport=transport)
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_create_text_items_images_and_instructions(api: openai.OpenAI, ups: Upstreams, model: str) -> None:
    text = api.responses.create(model=model, input="Salut", instructions="Be brief.")
    assert text.status == "completed" and text.output_text and text.instructions == "Be brief."
    assert text.usage is not None and text.usage.output_tokens > 0
    items = api.responses.create(
        model=model,
        instructions="Answer in French.",
        input=[
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
                    {"type": "input_image", "image_url": IMAGE, "detail": "low"},
                ],
            },
        ],
    )
    assert items.status == "completed" and items.output_text
    sent = ups.last(model)
    if model == "gpt-4o-mini":
        assert sent is not None and sent["messages"][0] == {"role": "system", "content": "Answer in French."}
        assert sent["messages"][3]["content"][1]["image_url"] == {"url": IMAGE, "detail": "low"}
    if model in NATIVE:
        assert sent is not None and sent["input"][0]["role"] == "system"
        assert sent["input"][3]["content"][1] == {"type": "input_image", "image_url": IMAGE, "detail": "low"}
    if model == "claude-haiku":
        assert sent is not None and sent["system"] == "Answer in French."
        assert sent["messages"][2]["content"][1]["source"]["type"] == "base64"


class Forecast(BaseModel):
    city: str
    celsius: int
    sunny: bool
    days: list[str]


@pytest.mark.parametrize("model", MODELS)
def test_parse_with_a_pydantic_model(api: openai.OpenAI, ups: Upstreams, model: str) -> None:
    parsed = api.responses.parse(model=model, input="Weather in Paris?", text_format=Forecast)
    assert isinstance(parsed.output_parsed, Forecast), parsed.output_text
    assert parsed.text.format.type == "json_schema"
    sent = ups.last(model)
    if model in NATIVE:
        assert sent is not None
        assert sent["text"]["format"]["schema"]["required"] == list(Forecast.model_fields)


@pytest.mark.parametrize("model", MODELS)
def test_tool_round_trip_through_previous_response_id(api: openai.OpenAI, ups: Upstreams, model: str) -> None:
    first = api.responses.create(model=model, input="Weather in Paris?", tools=[WEATHER_TOOL])
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"]
    second = api.responses.create(
        model=model,
        previous_response_id=first.id,
        tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'}],
    )
    assert second.status == "completed" and second.output[0].type == "message"
    assert second.previous_response_id == first.id
    sent = ups.last(model)
    if model == "gpt-4o-mini":
        assert sent is not None and [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
    if model in NATIVE:
        assert sent is not None
        assert [i.get("type") for i in sent["input"]] == ["message", "function_call", "function_call_output"]
    if model == "claude-haiku":
        assert sent is not None and sent["messages"][2]["content"][0]["type"] == "tool_result"


@pytest.mark.parametrize("model", MODELS)
def test_stream_helper_and_stream_true(api: openai.OpenAI, model: str) -> None:
    with api.responses.stream(model=model, input="Salut") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert isinstance(events[0], ResponseCreatedEvent) and isinstance(events[-1], ResponseCompletedEvent)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    assert deltas and deltas == final.output_text
    raw = list(api.responses.create(model=model, input="Salut", stream=True))
    assert isinstance(raw[-1], ResponseCompletedEvent) and raw[-1].response.output_text == deltas
    assert raw[-1].response.usage is not None and raw[-1].response.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_retrieve_input_items_and_delete(api: openai.OpenAI, model: str) -> None:
    created = api.responses.create(
        model=model,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "input_image", "image_url": IMAGE, "detail": "low"}]},
        ],
    )
    got = api.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == created.output_text and got.model == model
    items = api.responses.input_items.list(created.id, order="asc")
    assert [i.type for i in items.data] == ["message", "message"]
    assert items.data[1].content[0].type == "input_image"  # type: ignore[union-attr]
    api.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        api.responses.input_items.list(created.id)


UNREAD = {
    "reasoning": {"effort": "low", "summary": "auto"},
    "include": ["reasoning.encrypted_content"],
    "x_custom": {"nested": [1, "two"]},
}
CHAT_TOO = {"service_tier": "flex", "prompt_cache_key": "pck-1", "safety_identifier": "user-hash"}


@pytest.mark.parametrize("stream", [False, True])
def test_unread_fields_reach_a_native_upstream_and_never_a_chat_one(
    api: openai.OpenAI, ups: Upstreams, stream: bool
) -> None:
    extra = {**UNREAD, **CHAT_TOO}
    for model in MODELS:
        got = api.responses.create(model=model, input="Salut", stream=stream, extra_body=extra)
        if stream:
            assert isinstance(list(got)[-1], ResponseCompletedEvent)  # type: ignore[arg-type]
        else:
            assert got.status == "completed"  # type: ignore[union-attr]
    for native in (ups.native.bodies[-1], ups.azure.bodies[-1]):
        assert {k: native[k] for k in extra} == extra  # unchanged, the known ones still translated
        assert native["store"] is False and native["input"][0]["content"][0]["text"] == "Salut"
    chat = ups.chat.bodies[-1]
    assert not UNREAD.keys() & chat.keys() and not any(k.startswith("_") for k in chat)
    assert {k: chat[k] for k in CHAT_TOO} == CHAT_TOO  # chat takes these under the same names
    messages = ups.anthropic.bodies[-1]
    assert not UNREAD.keys() & messages.keys() and not any(k.startswith("_") for k in messages)
    # on /v1/chat/completions nothing changes: unknown chat fields still pass through as they did
    api.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_body={"x_custom": 1}
    )
    assert ups.chat.bodies[-1]["x_custom"] == 1


def test_azure_responses_keeps_deployment_urls_for_other_operations() -> None:
    from gateway.config.model import ProviderConfig
    from gateway.providers import build_provider
    from gateway.providers.base import Operation, UpstreamRequest

    config = ProviderConfig(
        name="az",
        type="azure_responses",
        base_url="https://r.azure.test/",
        api_key="k",
        options={"api_version": "v9"},
    )
    provider = build_provider(config, httpx.MockTransport(lambda r: httpx.Response(500)))
    chat = UpstreamRequest(Operation.CHAT, {"model": "dep"}, 5.0)
    embed = UpstreamRequest(Operation.EMBEDDINGS, {"model": "dep"}, 5.0)
    assert provider.url(chat) == "https://r.azure.test/openai/v1/responses"  # type: ignore[attr-defined]
    assert (
        provider.url(embed)  # type: ignore[attr-defined]
        == "https://r.azure.test/openai/deployments/dep/embeddings?api-version=v9"
    )
