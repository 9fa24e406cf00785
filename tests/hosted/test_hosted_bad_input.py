"""Issue 19 items 3-4, bad input and failing servers: an unknown or another tenant's server label, a
``server_url`` the operator did not configure, client credentials, a tool outside ``allowed_tools`` (the
request's or the config's) or the caller's role, arguments failing the tool's schema, and an MCP server
that times out, fails, explodes, returns 5 MB or is down. Requests are refused with a 400 naming the
field; a call's failure is the tool's result the model reads, never a crash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import KEY_ACME, GatewayFactory, free_port
from hosted_upstreams import ScriptedOpenAI
from mcp_servers import ToolServer
from test_hosted_conversation import hosted_routes
from upstreams import HostRouter

TOOL: dict[str, Any] = {"type": "mcp", "server_label": "kit", "require_approval": "never"}


@pytest.fixture
def kit() -> Iterator[ToolServer]:
    with ToolServer() as server:
        yield server


def gateway(
    gateway_factory: GatewayFactory, url: str, extra: str = "", server: str = ""
) -> tuple[openai.OpenAI, ScriptedOpenAI]:
    up = ScriptedOpenAI()
    routes = hosted_routes(url, extra)
    if server:
        routes = routes.replace(f"  kit: {{url: '{url}'}}", f"  kit: {{url: '{url}', {server}}}")
    gw = gateway_factory(routes=routes, transport=HostRouter(upstream_test=up.handle))
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0), up


def refused(client: openai.OpenAI, tool: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-4o-mini", input="count", tools=[tool])  # type: ignore[list-item]
    body: dict[str, Any] = caught.value.body  # type: ignore[assignment]
    return body


def test_requests_that_are_refused(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    extra = f"  other: {{url: '{kit.url}', tenants: [globex]}}\n"
    client, up = gateway(gateway_factory, kit.url, extra)
    unknown = refused(client, {**TOOL, "server_label": "nope"})
    assert (unknown["param"], unknown["code"]) == ("tools[0].server_label", "unknown_mcp_server")
    others = refused(client, {**TOOL, "server_label": "other"})  # globex's: as if it did not exist
    assert (others["param"], others["code"]) == ("tools[0].server_label", "unknown_mcp_server")
    elsewhere = refused(client, {**TOOL, "server_url": "http://169.254.169.254/mcp"})
    assert (elsewhere["param"], elsewhere["code"]) == ("tools[0].server_url", "mcp_server_not_allowed")
    assert refused(client, {**TOOL, "headers": {"authorization": "Bearer x"}})["param"] == "tools[0].headers"
    assert refused(client, {**TOOL, "allowed_tools": "count"})["param"] == "tools[0].allowed_tools"
    assert refused(client, {**TOOL, "require_approval": "sometimes"})["param"] == "tools[0].require_approval"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-4o-mini", input="x", tools=[TOOL], max_tool_calls=-1)  # type: ignore[list-item]
    assert caught.value.body["param"] == "max_tool_calls"  # type: ignore[index]
    assert up.bodies == [] and kit.calls.total() == 0 and kit.list_calls == 0
    # The configured URL itself is accepted.
    fine = client.responses.create(
        model="gpt-4o-mini", input="count", tools=[{**TOOL, "server_url": kit.url}]
    )  # type: ignore[list-item]
    assert fine.status == "completed" and kit.counts["*"] == 1


def run(client: openai.OpenAI, up: ScriptedOpenAI, name: str, arguments: dict[str, Any], **tool: Any) -> Any:
    up.name, up.arguments = name, arguments
    return client.responses.create(model="gpt-4o-mini", input="go", tools=[{**TOOL, **tool}])  # type: ignore[list-item]


def call_of(response: Any) -> Any:
    assert response.status == "completed", response
    (call,) = [i for i in response.output if i.type == "mcp_call"]
    assert response.output[-1].type == "message"  # the model went on after the failure
    return call


def test_tools_outside_allowed_tools_or_the_role_are_not_offered_and_refused(
    gateway_factory: GatewayFactory, kit: ToolServer
) -> None:
    policy = "tool_policy:\n  tools:\n    kit__headers: {roles: [admin]}\n"
    client, up = gateway(gateway_factory, kit.url, policy, server="allowed_tools: [count, echo, headers]")
    response = run(client, up, "kit__echo", {"text": "hi"}, allowed_tools=["count"])
    assert [t.name for t in response.output[0].tools] == ["count"]  # the request's ∩ the config's
    assert [t["function"]["name"] for t in up.bodies[-1]["tools"]] == ["kit__count"]
    call = call_of(response)
    assert call.status == "failed" and "not available" in json.dumps(call.error.model_dump())
    # Outside the config's allowed_tools: never listed, whatever the request says.
    response = run(client, up, "kit__fail", {}, allowed_tools=["fail", "count"])
    assert [t.name for t in response.output[0].tools] == ["count"]
    assert call_of(response).status == "failed"
    # The policy keeps `headers` to admins: a user key is not offered it.
    response = run(client, up, "kit__headers", {})
    assert sorted(t.name for t in response.output[0].tools) == ["count", "echo"]
    assert call_of(response).status == "failed"
    assert kit.calls.total() == 0


def test_arguments_failing_the_schema_are_not_sent(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    client, up = gateway(gateway_factory, kit.url)
    call = call_of(run(client, up, "kit__count", {"key": 7}))
    assert call.status == "failed" and call.error.type == "mcp_tool_execution_error"
    assert "key: 7 is not of type 'string'" in call.error.content[0]["text"]
    assert kit.calls.total() == 0
    assert up.bodies[-1]["messages"][-1]["content"].startswith("Error: arguments rejected")


def test_failing_servers_are_the_tools_result(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    client, up = gateway(gateway_factory, kit.url, server="timeout_s: 0.5")
    slow = call_of(run(client, up, "kit__slow", {"seconds": 2}))
    assert slow.status == "failed" and (slow.error.type, slow.error.code) == ("mcp_protocol_error", 504)
    failed = call_of(run(client, up, "kit__fail", {"message": "no stock"}))
    assert failed.error.type == "mcp_tool_execution_error" and failed.error.content[0]["text"] == "no stock"
    exploded = call_of(run(client, up, "kit__explode", {}))
    assert exploded.error.type == "mcp_protocol_error" and exploded.error.code == 500
    told = up.bodies[-1]["messages"][-1]
    assert told["role"] == "tool" and told["content"].startswith("Error: MCP server 'kit' answered an error")


def test_a_five_megabyte_result_is_bounded(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    client, up = gateway(gateway_factory, kit.url, server="max_result_bytes: 65536")
    big = call_of(run(client, up, "kit__big", {}))
    assert big.status == "completed" and "truncated" in big.output
    assert len(big.output.encode()) <= 65536
    assert up.bodies[-1]["messages"][-1]["content"] == big.output  # the model got the bounded text


def test_a_server_that_is_down_is_listed_with_its_error(gateway_factory: GatewayFactory) -> None:
    client, up = gateway(gateway_factory, f"http://127.0.0.1:{free_port()}/mcp")
    response = client.responses.create(model="gpt-4o-mini", input="count", tools=[TOOL])  # type: ignore[list-item]
    listing = response.output[0]
    assert listing.type == "mcp_list_tools" and listing.tools == [] and "unavailable" in (listing.error or "")
    assert response.status == "completed" and response.output[-1].type == "message"
    assert "tools" not in up.bodies[0]  # nothing offered
