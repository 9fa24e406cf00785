"""Issue 19 item 4, hard limits: ``max_tool_calls`` (the request's, capped by the policy), the cost
ceiling ``max_cost_usd`` (the loop stops BEFORE a step whose worst case would pass it), the wall time, and
the tenant's budget (admission refuses a step) each end the response ``incomplete`` with its reason and
the partial output; the tenant's spend is exactly the sum of the steps' costs and nothing stays reserved.

Prices: gpt-4o-mini costs 0.15 / 0.60 USD per million tokens; the scripted model reports 12 prompt and
900 completion tokens per step, so a step costs 0.0005418 USD, while admission reserves about 0.0006
(``max_output_tokens`` 1000 at the output price, plus the prompt)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from conftest import BUDGETS, KEY_ACME, GatewayFactory, sha
from hosted_upstreams import ScriptedOpenAI
from mcp_servers import ToolServer
from redis_server import RedisServer
from test_hosted_conversation import hosted_routes
from upstreams import HostRouter

KEY_ADMIN = "sk-test-acme-admin"
STEP_COST = Decimal("0.0005418")  # (12 × 0.15 + 900 × 0.60) / 1e6
TOOL: dict[str, Any] = {
    "type": "mcp",
    "server_label": "kit",
    "allowed_tools": ["count"],
    "require_approval": "never",
}


def budgets(usd: float) -> str:
    return BUDGETS.replace("  acme:\n", f"  acme:\n    budget: {{usd: {usd}, period: monthly}}\n").replace(
        "role: user}\n  globex:",
        f'role: user}}\n      - {{id: acme-admin, sha256: "{sha(KEY_ADMIN)}", role: admin}}\n  globex:',
    )


@pytest.fixture
def kit() -> Iterator[ToolServer]:
    with ToolServer() as server:
        yield server


class Setup:
    def __init__(
        self,
        gateway_factory: GatewayFactory,
        kit: ToolServer,
        policy: str = "",
        usd: float = 100,
        **settings: Any,
    ) -> None:
        self.up = ScriptedOpenAI(always_call=True, completion_tokens=900)
        self.gw = gateway_factory(
            routes=hosted_routes(kit.url, policy),
            budgets=budgets(usd),
            transport=HostRouter(upstream_test=self.up.handle),
            **settings,
        )
        self.client = openai.OpenAI(base_url=self.gw.base_url, api_key=KEY_ACME, max_retries=0)

    def create(self, **kw: Any) -> tuple[Any, Decimal]:
        kw.setdefault("tools", [TOOL])
        raw = self.client.responses.with_raw_response.create(
            model="gpt-4o-mini", input="count", max_output_tokens=1000, **kw
        )
        return raw.parse(), Decimal(raw.headers["x-gateway-cost-usd"])

    def spend(self) -> tuple[Decimal, float]:
        """The tenant's spent and reserved USD, once the last settlement is in (bounded wait)."""
        deadline = time.monotonic() + 10
        while True:
            body = httpx.get(
                self.gw.url + "/admin/spend",
                params={"tenant": "acme"},
                headers={"authorization": f"Bearer {KEY_ADMIN}"},
            ).json()
            if body["reserved_usd"] == 0 or time.monotonic() > deadline:
                return Decimal(str(body["spent_usd"])), body["reserved_usd"]
            time.sleep(0.05)


def check_money(setup: Setup, cost: Decimal, steps: int) -> None:
    """The spend is the sum of the steps (each priced like any request), none of it still reserved."""
    assert len(setup.up.bodies) == steps
    assert cost == STEP_COST * steps
    spent, reserved = setup.spend()
    assert (spent, reserved) == (cost, 0)


def calls(response: Any) -> list[Any]:
    return [i for i in response.output if i.type == "mcp_call"]


def test_max_tool_calls_from_the_request(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    setup = Setup(gateway_factory, kit)
    response, cost = setup.create(max_tool_calls=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_tool_calls"
    assert len(calls(response)) == 3 and kit.counts["*"] == 3
    check_money(setup, cost, 4)  # the fourth step asked for a fourth call: refused before it ran


def test_the_policy_caps_max_tool_calls(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    setup = Setup(gateway_factory, kit, "tool_policy:\n  defaults: {max_tool_calls: 2}\n")
    response, cost = setup.create(max_tool_calls=50)
    assert response.incomplete_details.reason == "max_tool_calls" and kit.counts["*"] == 2
    check_money(setup, cost, 3)


def test_max_tool_calls_streamed(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    setup = Setup(gateway_factory, kit)
    events = list(
        setup.client.responses.create(
            model="gpt-4o-mini",
            input="count",
            tools=[TOOL],
            max_tool_calls=1,
            stream=True,  # type: ignore[list-item]
        )
    )
    assert events[-1].type == "response.incomplete"
    final = events[-1].response  # type: ignore[union-attr]
    assert final.incomplete_details.reason == "max_tool_calls" and len(calls(final)) == 1
    assert kit.counts["*"] == 1


def test_the_cost_ceiling_stops_before_the_step_that_would_pass_it(
    gateway_factory: GatewayFactory, kit: ToolServer
) -> None:
    # Step 1: 0 + ~0.0006 fits in 0.0015; step 2: 0.00054 + ~0.0006 fits; step 3: 0.00108 + ~0.0006 does not.
    setup = Setup(gateway_factory, kit, "tool_policy:\n  defaults: {max_cost_usd: 0.0015}\n")
    response, cost = setup.create()
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_cost"
    assert len(calls(response)) == 2 and kit.counts["*"] == 2
    check_money(setup, cost, 2)
    assert cost <= Decimal("0.0015")


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_tenant_budget_ends_the_loop(
    gateway_factory: GatewayFactory, kit: ToolServer, store: str
) -> None:
    # 0.0009 admits step 1 (~0.0006 reserved); step 2 would reserve ~0.0006 over 0.00054 spent: refused.
    settings: dict[str, Any] = {}
    redis = RedisServer().start() if store == "redis" else None
    if redis is not None:
        settings = {"redis_url": redis.url, "delegation_secret": "s" * 40, "ledger_url": None}
    try:
        budget_ends_the_loop(Setup(gateway_factory, kit, usd=0.0009, **settings), kit)
    finally:
        if redis is not None:
            redis.stop()


def budget_ends_the_loop(setup: Setup, kit: ToolServer) -> None:
    response, cost = setup.create()
    assert response.status == "incomplete" and response.incomplete_details.reason == "budget_exceeded"
    assert len(calls(response)) == 1 and kit.counts["*"] == 1
    check_money(setup, cost, 1)


def test_a_budget_that_refuses_the_first_step_is_the_usual_error(
    gateway_factory: GatewayFactory, kit: ToolServer
) -> None:
    setup = Setup(gateway_factory, kit, usd=0.0001)
    with pytest.raises(openai.RateLimitError) as caught:
        setup.create()
    assert caught.value.code == "budget_exceeded"
    assert kit.counts["*"] == 0 and kit.list_calls == 1  # listed, nothing run
    # Streamed too: the stream starts only once the first step answered, so the refusal is an HTTP error.
    with pytest.raises(openai.RateLimitError):
        setup.create(stream=True)
    spent, reserved = setup.spend()
    assert (spent, reserved) == (0, 0)


def test_the_wall_time_cuts_a_slow_call(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    setup = Setup(gateway_factory, kit, "tool_policy:\n  defaults: {max_wall_s: 0.5}\n")
    setup.up.name, setup.up.arguments = "kit__slow", {"seconds": 3}
    response, cost = setup.create(tools=[{**TOOL, "allowed_tools": ["slow"]}])
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_wall_time"
    (call,) = calls(response)
    assert call.status == "failed" and call.error.code == 504 and "max_wall_s" in call.error.message
    check_money(setup, cost, 1)


def test_the_wall_time_stops_a_slow_model_before_its_next_step(
    gateway_factory: GatewayFactory, kit: ToolServer
) -> None:
    setup = Setup(gateway_factory, kit, "tool_policy:\n  defaults: {max_wall_s: 0.5}\n")
    setup.up.delay_s = 0.2  # a runaway model, each step 0.2 s: the wall time ends it, not the 20 calls
    response, cost = setup.create()
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_wall_time"
    ran = calls(response)
    done = [c for c in ran if c.status == "completed"]
    # A call begun just before the end may be cut by it (its outcome unknown); no call begins after it.
    assert done and all(c in done or "max_wall_s" in c.error.message for c in ran)
    assert kit.counts["*"] >= len(done) and len(ran) <= len(setup.up.bodies)
    # Every step that answered was paid for, no more; one under way at the end is cut, unbilled.
    assert len(setup.up.bodies) - setup.up.answered in (0, 1)
    assert cost == STEP_COST * setup.up.answered
    spent, reserved = setup.spend()
    assert (spent, reserved) == (cost, 0)


WALL = "tool_policy:\n  defaults: {max_wall_s: 0.5}\n"


@pytest.mark.parametrize("stream", [False, True])
def test_the_wall_time_cuts_a_model_step_under_way(
    gateway_factory: GatewayFactory, kit: ToolServer, stream: bool
) -> None:
    # Step 1 calls the tool at once; step 2 would take 5 s to read its result, the route's timeout_s is
    # 60 s, max_wall_s 0.5 s: step 2 is cut at the wall time like a request at its deadline (released,
    # unbilled), the output so far is kept, and no call follows.
    setup = Setup(gateway_factory, kit, WALL)
    setup.up.delay_after_tool_s = 5
    if stream:
        events = list(
            setup.client.responses.create(
                model="gpt-4o-mini",
                input="count",
                tools=[TOOL],  # type: ignore[list-item]
                max_output_tokens=1000,
                stream=True,
            )
        )
        assert events[-1].type == "response.incomplete"
        response = events[-1].response  # type: ignore[union-attr]
    else:
        response, cost = setup.create()
        assert cost == STEP_COST
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_wall_time"
    assert [i.type for i in response.output] == ["mcp_list_tools", "mcp_call"]
    assert response.output[1].status == "completed" and response.output[1].output == "1"
    assert kit.counts["*"] == 1
    assert len(setup.up.bodies) == 2 and setup.up.answered == 1  # step 2 began and never answered
    spent, reserved = setup.spend()
    assert (spent, reserved) == (STEP_COST, 0)  # step 1 settled; step 2 released at 0


def test_the_wall_time_cuts_a_slow_first_step(gateway_factory: GatewayFactory, kit: ToolServer) -> None:
    # Cut before anything ran: still the loop's own end (incomplete, the listing kept), not an HTTP error.
    setup = Setup(gateway_factory, kit, WALL)
    setup.up.delay_s = 5
    response, cost = setup.create()
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_wall_time"
    assert [i.type for i in response.output] == ["mcp_list_tools"] and kit.counts["*"] == 0
    assert len(setup.up.bodies) == 1 and setup.up.answered == 0 and cost == 0
    spent, reserved = setup.spend()
    assert (spent, reserved) == (0, 0)


def test_a_client_that_leaves_mid_loop_leaves_nothing_reserved(
    gateway_factory: GatewayFactory, kit: ToolServer
) -> None:
    setup = Setup(gateway_factory, kit)
    setup.up.always_call, setup.up.delay_s = False, 0.3
    body = {
        "model": "gpt-4o-mini",
        "input": "count",
        "tools": [TOOL],
        "max_output_tokens": 1000,
        "stream": True,
    }
    headers = {"authorization": f"Bearer {KEY_ACME}"}
    with httpx.stream("POST", setup.gw.base_url + "/responses", json=body, headers=headers, timeout=10) as r:
        for line in r.iter_lines():
            if "response.mcp_call.completed" in line:
                break  # the tool ran; the second model step is under way: leave now
    # The step the client left in still ran to its end and settled; the loop went no further.
    deadline = time.monotonic() + 10
    while len(setup.up.bodies) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    spent, reserved = setup.spend()
    assert reserved == 0 and spent == STEP_COST * len(setup.up.bodies) and kit.counts["*"] == 1


def test_each_step_is_a_request_of_its_own_in_the_log(
    gateway_factory: GatewayFactory, kit: ToolServer, caplog: pytest.LogCaptureFixture
) -> None:

    setup = Setup(gateway_factory, kit)
    setup.up.always_call = False
    with caplog.at_level("INFO", logger="gateway.access"):
        raw = setup.client.responses.with_raw_response.create(
            model="gpt-4o-mini", input="count", tools=[TOOL], max_output_tokens=1000
        )
        setup.spend()  # the settlements (and their log lines) are in
    loop_id = raw.headers["x-request-id"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    steps = [x for x in lines if x.get("parent_request_id") == loop_id]
    assert len(steps) == 2 and all(x["endpoint"] == "/v1/chat/completions" for x in steps)
    assert sum(Decimal(x["cost_usd"]) for x in steps) == Decimal(raw.headers["x-gateway-cost-usd"])
    (own,) = [x for x in lines if x.get("request_id") == loop_id]
    assert own["endpoint"] == "/v1/responses" and Decimal(own["cost_usd"]) == 0  # not charged twice
