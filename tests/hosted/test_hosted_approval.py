"""Issue 19 items 3-4, approvals: a policy's ``require_approval: always`` (which a request cannot lower) or
the request's own ends the response with an ``mcp_approval_request``; the client answers with an
``mcp_approval_response`` through ``previous_response_id``: approved, the call runs exactly once (a
retried approval gets the recorded result); rejected, it never runs and the model is told. With
``approver: reviewer`` the call waits on the route's ``tool`` hook instead."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import KEY_ACME, GatewayFactory, free_port
from hosted_upstreams import ScriptedOpenAI
from mcp_servers import ToolServer
from plugin_sidecar import Sidecar
from test_hosted_conversation import hosted_routes
from upstreams import HostRouter

TOOL: dict[str, Any] = {"type": "mcp", "server_label": "kit", "allowed_tools": ["count"]}
ALWAYS = "tool_policy:\n  tools:\n    kit__count: {require_approval: always}\n"


@pytest.fixture
def kit() -> Iterator[ToolServer]:
    with ToolServer() as server:
        yield server


def setup(
    gateway_factory: GatewayFactory, kit: ToolServer, extra: str = ALWAYS
) -> tuple[openai.OpenAI, ScriptedOpenAI]:
    up = ScriptedOpenAI()
    gw = gateway_factory(routes=hosted_routes(kit.url, extra), transport=HostRouter(upstream_test=up.handle))
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0), up


def approval(request_id: str, approve: bool) -> list[Any]:
    return [{"type": "mcp_approval_response", "approval_request_id": request_id, "approve": approve}]


def test_approved_runs_once_even_when_the_approval_is_sent_again(
    gateway_factory: GatewayFactory, kit: ToolServer
) -> None:
    client, up = setup(gateway_factory, kit)
    # The request says "never"; the policy's "always" holds all the same.
    asked = client.responses.create(
        model="gpt-4o-mini", input="count", tools=[{**TOOL, "require_approval": "never"}]
    )
    assert asked.status == "completed"
    assert [i.type for i in asked.output] == ["mcp_list_tools", "mcp_approval_request"]
    request = asked.output[1]
    assert (request.server_label, request.name) == ("kit", "count")  # type: ignore[union-attr]
    assert json.loads(request.arguments) == {"key": "openai"}  # type: ignore[union-attr]
    assert kit.counts["*"] == 0 and len(up.bodies) == 1

    for attempt in range(2):  # the second is a client's retry of the same approval
        done = client.responses.create(
            model="gpt-4o-mini",
            input=approval(request.id, True),
            tools=[TOOL],  # type: ignore[list-item]
            previous_response_id=asked.id,
        )
        assert [i.type for i in done.output] == ["mcp_call", "message"], attempt
        call = done.output[0]
        assert call.approval_request_id == request.id and call.output == "1"  # type: ignore[union-attr]
        assert done.output_text == "Tool said: 1"
        assert kit.counts == {"openai": 1, "*": 1}


def test_rejected_never_runs_and_the_model_is_told(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    client, up = setup(gateway_factory, kit)
    asked = client.responses.create(model="gpt-4o-mini", input="count", tools=[TOOL])  # type: ignore[list-item]
    request_id = asked.output[1].id
    done = client.responses.create(
        model="gpt-4o-mini",
        input=approval(request_id, False),
        tools=[TOOL],  # type: ignore[list-item]
        previous_response_id=asked.id,
    )
    assert kit.counts["*"] == 0
    call = done.output[0]
    assert call.type == "mcp_call" and call.status == "failed" and call.output is None
    assert call.approval_request_id == request_id
    told = up.bodies[-1]["messages"][-1]
    assert told["role"] == "tool" and "rejected" in told["content"]
    assert "rejected" in done.output_text


@pytest.mark.parametrize(
    "asked", ["always", {"always": {"tool_names": ["count"]}}], ids=["always", "always-by-name"]
)
def test_the_request_may_ask_for_approval(
    gateway_factory: GatewayFactory, kit: ToolServer, asked: object
) -> None:
    client, _ = setup(gateway_factory, kit, extra="")
    response = client.responses.create(
        model="gpt-4o-mini",
        input="count",
        tools=[{**TOOL, "require_approval": asked}],  # type: ignore[list-item]
    )
    assert response.output[-1].type == "mcp_approval_request" and kit.counts["*"] == 0


def test_streamed_approval_request(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    client, _ = setup(gateway_factory, kit)
    events = list(client.responses.create(model="gpt-4o-mini", input="count", tools=[TOOL], stream=True))  # type: ignore[list-item]
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.item.type for e in added] == ["mcp_list_tools", "mcp_approval_request"]  # type: ignore[union-attr]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output[-1].type == "mcp_approval_request"  # type: ignore[union-attr]
    assert kit.counts["*"] == 0


def test_an_unknown_approval_request_is_a_400(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    client, _ = setup(gateway_factory, kit)
    asked = client.responses.create(model="gpt-4o-mini", input="count", tools=[TOOL])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model="gpt-4o-mini",
            input=approval("mcpr_nope", True),
            tools=[TOOL],  # type: ignore[list-item]
            previous_response_id=asked.id,
        )
    assert caught.value.body["param"] == "input[0].approval_request_id"  # type: ignore[index]
    assert kit.counts["*"] == 0


# -- approver: reviewer (the tool hook) --------------------------------------------------------------


@pytest.fixture(scope="module")
def sidecar() -> Iterator[Sidecar]:
    side = Sidecar(free_port()).start()
    yield side
    side.stop()


def reviewed(
    gateway_factory: GatewayFactory,
    kit: ToolServer,
    sidecar: Sidecar,
    policy: str = "",
    on_error: str = "closed",
) -> openai.OpenAI:
    extra = (
        f"tool_policy:\n{policy}  tools:\n    kit__count: {{require_approval: always, approver: reviewer}}\n"
        f"plugins:\n  rev: {{url: '{sidecar.plugin_url('rev')}', hooks: [tool], on_error: {on_error}}}\n"
    )
    routes = hosted_routes(kit.url, extra).replace(
        "routes:\n",
        "routes:\n"
        "  - {name: reviewed, match: {model: reviewed}, targets: [{model: mock-chat}], plugins: [rev]}\n",
    )
    gw = gateway_factory(routes=routes)
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)


def test_a_reviewer_approves_with_edited_arguments(
    gateway_factory: GatewayFactory, kit: ToolServer, sidecar: Sidecar
) -> None:
    sidecar.reset()
    edited = {"id": "x", "name": "kit__count", "arguments": '{"key": "edited"}'}
    sidecar.set("rev", "tool", answer={"action": "modify", "tool_call": edited})
    client = reviewed(gateway_factory, kit, sidecar)
    response = client.responses.create(model="reviewed", input="count", tools=[TOOL])  # type: ignore[list-item]
    assert [i.type for i in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert response.output[1].arguments == '{"key": "edited"}'  # type: ignore[union-attr]
    assert kit.counts == {"edited": 1, "*": 1}
    (call,) = [c for c in sidecar.calls() if c["hook"] == "tool"]
    assert call["body"]["tool_call"]["name"] == "kit__count"


def test_a_reviewer_may_send_edited_arguments_as_an_object(
    gateway_factory: GatewayFactory, kit: ToolServer, sidecar: Sidecar
) -> None:
    # An object (not the wire's JSON string) is taken and serialized canonically: compact, keys sorted.
    sidecar.reset()
    edited = {"name": "kit__count", "arguments": {"key": "object", "by": "reviewer"}}
    sidecar.set("rev", "tool", answer={"action": "modify", "tool_call": edited})
    client = reviewed(gateway_factory, kit, sidecar)
    response = client.responses.create(model="reviewed", input="count", tools=[TOOL])  # type: ignore[list-item]
    assert response.status == "completed"
    assert [i.type for i in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    call = response.output[1]
    assert call.type == "mcp_call" and call.status == "completed" and call.error is None
    assert call.arguments == '{"by":"reviewer","key":"object"}'
    assert kit.counts == {"object": 1, "*": 1}


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ('{"key": "half', "is not valid JSON"),
        ('["key", "edited"]', "must be a JSON object"),
        (["key", "edited"], "a JSON object, or a JSON string of one"),
    ],
)
def test_edited_arguments_that_are_not_a_json_object_are_refused(
    gateway_factory: GatewayFactory, kit: ToolServer, sidecar: Sidecar, arguments: Any, reason: str
) -> None:
    sidecar.reset()
    edited = {"name": "kit__count", "arguments": arguments}
    sidecar.set("rev", "tool", answer={"action": "modify", "tool_call": edited})
    client = reviewed(gateway_factory, kit, sidecar)
    response = client.responses.create(model="reviewed", input="count", tools=[TOOL])  # type: ignore[list-item]
    assert response.status == "completed" and kit.counts["*"] == 0  # not run, neither edited nor as asked
    call = response.output[1]
    assert call.type == "mcp_call" and call.status == "failed"
    error = json.dumps(call.error.model_dump())
    assert "reviewer could not decide" in error and reason in error


def test_a_reviewer_rejection_is_the_tool_result(
    gateway_factory: GatewayFactory, kit: ToolServer, sidecar: Sidecar
) -> None:
    sidecar.reset()
    sidecar.set(
        "rev", "tool", answer={"action": "reject", "status": 403, "code": "denied", "message": "not today"}
    )
    client = reviewed(gateway_factory, kit, sidecar)
    response = client.responses.create(model="reviewed", input="count", tools=[TOOL])  # type: ignore[list-item]
    assert response.status == "completed" and kit.counts["*"] == 0
    call = response.output[1]
    assert call.type == "mcp_call" and call.status == "failed"
    assert "not today" in json.dumps(call.error.model_dump()) and "not today" in response.output_text


@pytest.mark.parametrize("on_error", ["closed", "open"])
def test_an_unreachable_reviewer_fails_closed(
    gateway_factory: GatewayFactory, kit: ToolServer, sidecar: Sidecar, on_error: str
) -> None:
    # Even an `on_error: open` plugin: skipping an approval would run the call unapproved.
    sidecar.reset()
    sidecar.set("rev", "tool", status=500, raw="broken")
    client = reviewed(gateway_factory, kit, sidecar, on_error=on_error)
    response = client.responses.create(model="reviewed", input="count", tools=[TOOL])  # type: ignore[list-item]
    assert response.status == "completed" and kit.counts["*"] == 0
    call = response.output[1]
    assert call.type == "mcp_call" and call.status == "failed"
    assert "reviewer could not decide" in json.dumps(call.error.model_dump())


def test_a_reviewer_wait_cut_by_the_wall_time_ends_the_loop_incomplete(
    gateway_factory: GatewayFactory, kit: ToolServer, sidecar: Sidecar
) -> None:
    # The reviewer does not decide within max_wall_s: the call is not run and the response ends
    # incomplete (max_wall_time), like a tool call cut at the wall time, not as a failed plugin.
    sidecar.reset()
    sidecar.set("rev", "tool", delay_s=3)
    client = reviewed(gateway_factory, kit, sidecar, "  defaults: {max_wall_s: 0.5}\n")
    response = client.responses.create(model="reviewed", input="count", tools=[TOOL])  # type: ignore[list-item]
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_wall_time"
    assert kit.counts["*"] == 0
    call = response.output[1]
    assert call.type == "mcp_call" and call.status == "failed" and call.error is not None
    error = json.dumps(call.error.model_dump())
    assert "max_wall_s" in error and "reviewer" in error and "not run" in error
