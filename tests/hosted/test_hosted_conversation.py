"""Issue 19 item 3: the openai SDK runs a hosted-MCP-tool conversation through the gateway against the
mock, an OpenAI-type loopback upstream and an Anthropic loopback upstream: the server's tools are listed
(``mcp_list_tools``), the model's call runs once on a real MCP server (``mcp_call``), its result goes back
to the model, which answers; streamed, the same with OpenAI's MCP events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import KEY_ACME, ROUTES, GatewayFactory
from hosted_upstreams import ScriptedAnthropic, ScriptedOpenAI
from mcp_servers import ToolServer
from upstreams import HostRouter

TOOL = {"type": "mcp", "server_label": "kit", "allowed_tools": ["count"], "require_approval": "never"}


def hosted_routes(url: str, extra: str = "") -> str:
    return (
        ROUTES.replace(
            "  local: {type: mock}",
            "  local: {type: mock}\n"
            "  anth: {type: anthropic, base_url: 'http://anthropic.test', api_key: sk-ant}",
        ).replace(
            "models:\n",
            "models:\n  claude: {provider: anth, upstream: claude-3-5-haiku-latest,"
            " price: {input_per_mtok: 1, output_per_mtok: 5}}\n",
        )
        + f"mcp_servers:\n  kit: {{url: '{url}'}}\n"
        + extra
    )


@pytest.fixture
def kit() -> Iterator[ToolServer]:
    with ToolServer() as server:
        yield server


def client_for(gateway_factory: GatewayFactory, kit: ToolServer, **upstreams: Any) -> openai.OpenAI:
    transport = HostRouter(**upstreams) if upstreams else None
    gw = gateway_factory(routes=hosted_routes(kit.url), transport=transport)
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)


def check_output(output: list[Any], key: str) -> None:
    kinds = [item.type for item in output]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"], kinds
    listed, call, message = output
    assert listed.server_label == "kit" and [t.name for t in listed.tools] == ["count"]
    assert call.server_label == "kit" and call.name == "count" and call.error is None
    assert call.output == "1" and call.status == "completed"
    assert call.arguments and key in call.arguments
    assert message.content[0].text.endswith("1")  # the model read the tool's result


def test_mock(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    client = client_for(gateway_factory, kit)
    response = client.responses.create(model="mock-chat", input="count", tools=[TOOL])  # type: ignore[list-item]
    assert response.status == "completed"
    key = next(k for k in kit.counts if k != "*")
    check_output(response.output, key)
    assert kit.counts["*"] == 1
    assert response.usage is not None and response.usage.input_tokens > 0
    stored = client.responses.retrieve(response.id)
    assert [i.type for i in stored.output] == ["mcp_list_tools", "mcp_call", "message"]


def test_openai_type_upstream(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    up = ScriptedOpenAI()
    client = client_for(gateway_factory, kit, upstream_test=up.handle)
    response = client.responses.create(model="gpt-4o-mini", input="count", tools=[TOOL])  # type: ignore[list-item]
    check_output(response.output, "openai")
    assert kit.counts == {"openai": 1, "*": 1}
    assert len(up.bodies) == 2
    first, second = up.bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["kit__count"]
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "kit__count"
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "1"}
    assert response.output_text == "Tool said: 1"


def test_anthropic_upstream(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    up = ScriptedAnthropic()
    client = client_for(gateway_factory, kit, anthropic_test=up.handle)
    response = client.responses.create(model="claude", input="count", tools=[TOOL])  # type: ignore[list-item]
    check_output(response.output, "anthropic")
    assert kit.counts == {"anthropic": 1, "*": 1}
    assert len(up.bodies) == 2
    assert [t["name"] for t in up.bodies[0]["tools"]] == ["kit__count"]
    result = up.bodies[1]["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_1"
    assert response.output_text == "Tool said: 1"
    # The usage is the sum of both steps (20 + 20 in, 7 + 7 out).
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (40, 14)


MCP_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.mcp_list_tools.in_progress",
    "response.mcp_list_tools.completed",
    "response.output_item.done",
    "response.output_item.added",
    "response.mcp_call_arguments.delta",
    "response.mcp_call_arguments.done",
    "response.mcp_call.in_progress",
    "response.mcp_call.completed",
    "response.output_item.done",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.mark.parametrize("model", ["mock-chat", "gpt-4o-mini", "claude"])
def test_stream(gateway_factory: GatewayFactory, kit: ToolServer, model: str) -> None:
    client = client_for(
        gateway_factory, kit, upstream_test=ScriptedOpenAI().handle, anthropic_test=ScriptedAnthropic().handle
    )
    events = list(client.responses.create(model=model, input="count", tools=[TOOL], stream=True))  # type: ignore[list-item]
    assert [e.type for e in events] == MCP_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    key = next(k for k in kit.counts if k != "*")
    check_output(final.output, key)
    assert kit.counts["*"] == 1
    call_done = events[11].item  # type: ignore[union-attr]
    assert call_done.type == "mcp_call" and call_done.output == "1"
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_a_later_turn_reuses_the_listing_and_replays_the_call(
    gateway_factory: GatewayFactory, kit: ToolServer
) -> None:
    up = ScriptedOpenAI()
    client = client_for(gateway_factory, kit, upstream_test=up.handle)
    first = client.responses.create(model="gpt-4o-mini", input="count", tools=[TOOL])  # type: ignore[list-item]
    second = client.responses.create(
        model="gpt-4o-mini",
        input="again",
        tools=[TOOL],  # type: ignore[list-item]
        previous_response_id=first.id,
    )
    # Listed once per conversation (as OpenAI does); the first turn's call is history the model sees.
    assert [i.type for i in second.output] == ["mcp_call", "message"]
    assert second.output[0].output == "2"  # type: ignore[union-attr]
    history = up.bodies[2]["messages"]
    assert any(m.get("tool_calls") for m in history[:-1]) and {"role": "user", "content": "again"} in history


def test_a_later_turn_without_mcp_tools_reads_the_calls_as_text(
    gateway_factory: GatewayFactory, kit: ToolServer
) -> None:
    up = ScriptedAnthropic()
    client = client_for(gateway_factory, kit, anthropic_test=up.handle)
    first = client.responses.create(model="claude", input="count", tools=[TOOL])  # type: ignore[list-item]
    client.responses.create(model="claude", input="thanks", previous_response_id=first.id)
    # Anthropic refuses tool_use blocks in a request without tools: the earlier call arrives as text.
    body = up.bodies[-1]
    assert "tools" not in body
    blocks = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]]
    assert not [b for b in blocks if b.get("type") in ("tool_use", "tool_result")]
    assert "I called the tool kit__count" in json.dumps(body["messages"])


def test_the_steps_are_routed_by_the_callers_task(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    # x-gateway-task routes the request, so it routes each model step too: here to the Anthropic model,
    # though the request names gpt-4o-mini (whose upstream would answer otherwise).
    openai_up, anthropic_up = ScriptedOpenAI(), ScriptedAnthropic()
    support = "  - name: support\n    match: {task: support}\n    targets: [{model: claude}]\n"
    routes = hosted_routes(kit.url).replace("routes:\n", "routes:\n" + support)
    gw = gateway_factory(
        routes=routes,
        transport=HostRouter(upstream_test=openai_up.handle, anthropic_test=anthropic_up.handle),
    )
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini",
        input="count",
        tools=[TOOL],  # type: ignore[list-item]
        extra_headers={"x-gateway-task": "support"},
    )
    assert raw.headers["x-gateway-route"] == "support"
    check_output(raw.parse().output, "anthropic")
    assert len(anthropic_up.bodies) == 2 and openai_up.bodies == []
