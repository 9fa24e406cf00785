"""`previous_response_id` through the pipeline: the stored chain goes ahead of the next turn's input,
whichever provider serves it; `store: false`, another tenant's and a deleted id."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from conftest import BUDGETS, KEY_ACME, KEY_GLOBEX, GatewayFactory
from test_responses_sdk import MODELS, ROUTES_ALL, WEATHER_TOOL, Upstreams
from upstreams import HostRouter


@pytest.fixture
def ups() -> Upstreams:
    return Upstreams()


@pytest.fixture
def gw(gateway_factory: GatewayFactory, ups: Upstreams):
    transport = HostRouter(upstream_test=ups.openai_handle, anthropic_test=ups.anthropic_handle)
    return gateway_factory(routes=ROUTES_ALL, budgets=BUDGETS, transport=transport)


def client(gw, key: str = KEY_ACME) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def stored(gw):
    return gw.app.state.gateway.shared.responses


@pytest.mark.parametrize("model", MODELS)
def test_function_tool_round_trip_through_previous_response_id(gw, ups: Upstreams, model: str) -> None:
    api = client(gw)
    first = api.responses.create(
        model=model, input="Weather in Paris?", instructions="Be brief.", tools=[WEATHER_TOOL]
    )
    call = next(item for item in first.output if item.type == "function_call")
    second = api.responses.create(
        model=model,
        previous_response_id=first.id,
        tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'}],
    )
    assert second.previous_response_id == first.id and second.status == "completed"
    assert second.instructions is None  # instructions are not carried to the next turn (as OpenAI)
    if model == "gpt-4o-mini":
        sent = ups.chat_bodies[-1]["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
        assert sent[0]["content"] == "Weather in Paris?"
        assert sent[1]["tool_calls"][0]["id"] == call.call_id
        assert sent[1]["tool_calls"][0]["function"]["arguments"] == call.arguments
        assert sent[2]["tool_call_id"] == call.call_id
    if model == "claude-haiku":
        sent = ups.messages_bodies[-1]["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "user"]
        assert sent[1]["content"][0]["id"] == call.call_id
    if model == "mock-chat":
        assert second.output_text.startswith("Mock reply")


def test_a_conversation_moves_between_providers_and_streams(gw, ups: Upstreams) -> None:
    api = client(gw)
    one = api.responses.create(model="mock-chat", input="My name is Ada.")
    with api.responses.stream(model="gpt-4o-mini", input="And yours?", previous_response_id=one.id) as s:
        two = s.get_final_response()
    three = api.responses.create(model="claude-haiku", input="Bye", previous_response_id=two.id)
    assert three.status == "completed"
    sent = ups.messages_bodies[-1]["messages"]
    texts = [m["content"] if isinstance(m["content"], str) else m["content"][0]["text"] for m in sent]
    assert texts == ["My name is Ada.", "Mock reply: My name is Ada.", "And yours?", "Hello there!", "Bye"]


def test_store_false_keeps_nothing(gw) -> None:
    api = client(gw)
    first = api.responses.create(model="mock-chat", input="x", store=False)
    assert first.store is False
    with pytest.raises(openai.BadRequestError) as info:
        api.responses.create(model="mock-chat", input="y", previous_response_id=first.id)
    assert info.value.body["code"] == "previous_response_not_found"  # type: ignore[index]


def test_unknown_other_tenants_and_deleted_ids_are_400(gw) -> None:
    api = client(gw)
    first = api.responses.create(model="mock-chat", input="x")
    for key, previous in [(KEY_ACME, "resp_nope"), (KEY_GLOBEX, first.id)]:
        with pytest.raises(openai.BadRequestError) as info:
            client(gw, key).responses.create(model="mock-chat", input="y", previous_response_id=previous)
        body = info.value.body
        assert isinstance(body, dict)
        assert body["code"] == "previous_response_not_found" and body["param"] == "previous_response_id"
    assert asyncio.run(stored(gw).delete("acme", first.id)) is True
    with pytest.raises(openai.BadRequestError):
        api.responses.create(model="mock-chat", input="y", previous_response_id=first.id)


def test_the_stored_turn_is_what_the_client_got(gw) -> None:
    api = client(gw)
    first = api.responses.create(model="mock-chat", input="hello", metadata={"a": "b"})
    turn = asyncio.run(stored(gw).get("acme", first.id))
    assert turn.response == json.loads(first.model_dump_json(exclude_unset=True))
    assert turn.deployment == "mock-chat" and turn.previous_response_id is None
    (item,) = turn.input_items
    assert (item["type"], item["role"]) == ("message", "user") and item["id"]
    assert item["content"] == [{"type": "input_text", "text": "hello"}]
    events = list(api.responses.create(model="mock-chat", input="again", stream=True))
    final = events[-1].response  # type: ignore[union-attr]
    assert asyncio.run(stored(gw).get("acme", final.id)).response["output"][0]["content"][0]["text"] == (
        "Mock reply: again"
    )
