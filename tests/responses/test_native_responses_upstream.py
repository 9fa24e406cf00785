"""`type: openai_responses`: an OpenAI-type upstream reached through its own Responses API, behind a
loopback fake that validates every request with the openai SDK's own request types."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from conftest import BUDGETS, KEY_ACME, GatewayFactory
from openai.types.responses import ResponseCompletedEvent, ResponseTextDeltaEvent
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming
from pydantic import BaseModel, TypeAdapter
from test_responses_sdk import WEATHER_TOOL

ROUTES = """
providers:
  native: {type: openai_responses, base_url: "http://native.test/v1", api_key: sk-native}
models:
  gpt-native: {provider: native, upstream: gpt-4.1, price: {input_per_mtok: 1, output_per_mtok: 2}}
"""
CREATE = TypeAdapter(ResponseCreateParamsNonStreaming)
USAGE = {
    "input_tokens": 9,
    "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
    "output_tokens": 4,
    "output_tokens_details": {"reasoning_tokens": 1},
    "total_tokens": 13,
}


def response(body: dict[str, Any], output: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {
        "id": "resp_up1",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": USAGE,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
    }


class FakeResponses:
    """Speaks only `/v1/responses`: a request the SDK's types reject fails the test."""

    path = "/v1/responses"
    auth = ("authorization", "Bearer sk-native")

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == self.path, request.url.path
        assert request.headers[self.auth[0]] == self.auth[1]
        body = json.loads(request.content)
        stream = body.pop("stream", False)
        CREATE.validate_python(body)  # what the upstream would refuse
        assert body["store"] is False and "messages" not in body
        self.bodies.append(body)
        if any(i.get("type") == "function_call_output" for i in body["input"]):
            output = [_message("It is 21°C.")]
        elif body.get("tools"):
            output = [
                {
                    "id": "fc_1",
                    "type": "function_call",
                    "call_id": "call_n1",
                    "name": body["tools"][0]["name"],
                    "arguments": '{"city": "Paris", "days": 1}',
                    "status": "completed",
                }
            ]
        else:
            output = [_message("Native hello")]
        status = "incomplete" if body.get("max_output_tokens") == 1 else "completed"
        answer = response(body, output, status)
        if not stream:
            return httpx.Response(200, json=answer)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_events(answer))


def _message(text: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [part]}


def _events(answer: dict[str, Any]) -> bytes:
    events: list[dict[str, Any]] = [{"type": "response.created", "response": {**answer, "output": []}}]
    for i, item in enumerate(answer["output"]):
        if item["type"] == "message":
            events.append(
                {"type": "response.output_item.added", "output_index": i, "item": {**item, "content": []}}
            )
            text = item["content"][0]["text"]
            for word in (text[:3], text[3:]):
                events.append({"type": "response.output_text.delta", "output_index": i, "delta": word})
        else:
            events.append(
                {"type": "response.output_item.added", "output_index": i, "item": {**item, "arguments": ""}}
            )
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "output_index": i,
                    "delta": item["arguments"],
                }
            )
    events.append({"type": "response.completed", "response": answer})
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


@pytest.fixture
def fake() -> FakeResponses:
    return FakeResponses()


@pytest.fixture
def api(gateway_factory: GatewayFactory, fake: FakeResponses) -> openai.OpenAI:
    gw = gateway_factory(routes=ROUTES, budgets=BUDGETS, transport=httpx.MockTransport(fake.handle))
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)


def test_create_and_usage_through_a_native_upstream(api: openai.OpenAI, fake: FakeResponses) -> None:
    raw = api.responses.with_raw_response.create(
        model="gpt-native", input="hi", instructions="Be brief.", max_output_tokens=50
    )
    out = raw.parse()
    assert out.output_text == "Native hello" and out.status == "completed"
    assert out.usage is not None and (out.usage.input_tokens, out.usage.output_tokens) == (9, 4)
    assert out.usage.input_tokens_details.cached_tokens == 2
    assert out.usage.output_tokens_details.reasoning_tokens == 1
    assert float(raw.headers["x-gateway-cost-usd"]) > 0
    sent = fake.bodies[-1]
    assert sent["model"] == "gpt-4.1" and sent["max_output_tokens"] == 50
    assert sent["input"][0]["role"] == "system" and sent["input"][1]["content"][0]["text"] == "hi"
    assert api.responses.create(model="gpt-native", input="hi", max_output_tokens=1).status == "incomplete"


class City(BaseModel):
    city: str


def test_parse_and_tool_round_trip_through_previous_response_id(
    api: openai.OpenAI, fake: FakeResponses
) -> None:
    fake_answer = api.responses.create(
        model="gpt-native",
        input="x",
        text={"format": {"type": "json_schema", "name": "c", "schema": {"type": "object"}}},
    )
    assert fake_answer.status == "completed"
    assert fake.bodies[-1]["text"]["format"] == {
        "type": "json_schema",
        "name": "c",
        "schema": {"type": "object"},
    }
    first = api.responses.create(model="gpt-native", input="Weather?", tools=[WEATHER_TOOL])
    call = first.output[0]
    assert call.type == "function_call" and call.call_id == "call_n1"
    second = api.responses.create(
        model="gpt-native",
        previous_response_id=first.id,
        tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21"}],
    )
    assert second.output_text == "It is 21°C."
    kinds = [i.get("type") for i in fake.bodies[-1]["input"]]
    assert kinds == ["message", "function_call", "function_call_output"]


def test_streams_through_a_native_upstream(api: openai.OpenAI) -> None:
    with api.responses.stream(model="gpt-native", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)) == "Native hello"
    assert isinstance(events[-1], ResponseCompletedEvent) and final.usage is not None
    assert final.usage.output_tokens == 4
    chat = api.chat.completions.create(model="gpt-native", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "Native hello"
