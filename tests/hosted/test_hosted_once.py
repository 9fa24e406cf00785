"""Issue 19 item 4, at most once: every hosted tool call is claimed under its idempotency key (response id
+ call id) in the shared store before it runs. A counting MCP server proves the tool ran exactly once
across an upstream retry and a fallback in mid-loop, across an approval sent twice to two replicas on
one Redis, and not at all when its key was left in flight by a replica that died; ``x-gateway-tools:
dry-run`` validates and records calls without running them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import KEY_ACME, GatewayFactory
from hosted_upstreams import ScriptedOpenAI
from mcp_servers import ToolServer
from redis_server import RedisServer
from test_hosted_conversation import hosted_routes
from upstreams import HostRouter

from gateway.hosted.calls import call_digest
from gateway.hosted.idempotency import LocalCallRecords, Record, RedisCallRecords
from gateway.store.redis import RedisStore

TOOL: dict[str, Any] = {
    "type": "mcp",
    "server_label": "kit",
    "allowed_tools": ["count"],
    "require_approval": "never",
}
ROUTED = (
    "  - {name: retried, match: {model: retried}, targets: [{model: gpt-4o-mini}],"
    " retry: {attempts: 3, backoff_initial_s: 0, backoff_max_s: 0}}\n"
    "  - {name: falls, match: {model: falls}, targets: [{model: gpt-4o-mini}], fallbacks: [mock-chat],"
    " retry: {attempts: 1, backoff_initial_s: 0, backoff_max_s: 0}}\n"
)
SECRET = "s" * 40


@pytest.fixture
def kit() -> Iterator[ToolServer]:
    with ToolServer() as server:
        yield server


def routes(kit: ToolServer, extra: str = "") -> str:
    return hosted_routes(kit.url, extra).replace("routes:\n", "routes:\n" + ROUTED)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_upstream_retry_after_the_call_does_not_run_it_again(
    gateway_factory: GatewayFactory, kit: ToolServer, stream: bool
) -> None:
    up = ScriptedOpenAI(fail_after_tool=2)
    gw = gateway_factory(routes=routes(kit), transport=HostRouter(upstream_test=up.handle))
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    if stream:
        events = list(client.responses.create(model="retried", input="count", tools=[TOOL], stream=True))  # type: ignore[list-item]
        response = events[-1].response  # type: ignore[union-attr]
    else:
        response = client.responses.create(model="retried", input="count", tools=[TOOL])  # type: ignore[list-item]
    assert response.status == "completed" and response.output_text == "Tool said: 1"
    assert up.failures == 2 and len(up.bodies) == 4  # step 2 tried three times
    assert kit.counts == {"openai": 1, "*": 1}


def test_a_fallback_in_mid_loop_does_not_run_the_call_again(
    gateway_factory: GatewayFactory, kit: ToolServer
) -> None:
    up = ScriptedOpenAI(fail_after_tool=5)
    gw = gateway_factory(routes=routes(kit), transport=HostRouter(upstream_test=up.handle))
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    response = client.responses.create(model="falls", input="count", tools=[TOOL])  # type: ignore[list-item]
    assert response.status == "completed"
    assert response.output_text == "Mock reply: 1"  # the fallback deployment (mock) answered step 2
    assert up.failures == 1 and kit.counts == {"openai": 1, "*": 1}


def test_dry_run_validates_and_records_without_running(
    gateway_factory: GatewayFactory, kit: ToolServer
) -> None:
    up = ScriptedOpenAI()
    gw = gateway_factory(routes=routes(kit), transport=HostRouter(upstream_test=up.handle))
    client = openai.OpenAI(
        base_url=gw.base_url, api_key=KEY_ACME, max_retries=0, default_headers={"x-gateway-tools": "dry-run"}
    )
    response = client.responses.create(model="gpt-4o-mini", input="count", tools=[TOOL])  # type: ignore[list-item]
    call = response.output[1]
    assert call.type == "mcp_call" and call.error is None
    assert json.loads(call.output or "")["dry_run"] is True
    up.arguments = {"key": 7}  # not a string: fails the tool's schema
    bad = client.responses.create(model="gpt-4o-mini", input="count", tools=[TOOL])  # type: ignore[list-item]
    failed = bad.output[1]
    assert failed.status == "failed" and "key" in json.dumps(failed.error.model_dump())  # type: ignore[union-attr]
    assert kit.counts["*"] == 0 and kit.calls.total() == 0  # nothing ran
    stored = client.responses.retrieve(response.id)
    assert stored.output[1].output == call.output  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model="gpt-4o-mini",
            input="count",
            tools=[TOOL],  # type: ignore[list-item]
            extra_headers={"x-gateway-tools": "run-twice"},
        )
    assert caught.value.body["param"] == "x-gateway-tools"  # type: ignore[index]


# -- the records, on Redis and in memory ---------------------------------------------------------------


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


async def test_claims_are_atomic_and_keep_the_result(redis: RedisServer) -> None:
    store = RedisStore(redis.url)
    try:
        for records in (RedisCallRecords(store), LocalCallRecords()):
            pending = Record("pending", "d1")
            assert await records.claim("acme", "resp_1:call_1", pending) is None
            assert await records.claim("acme", "resp_1:call_1", pending) == pending  # in flight: not again
            assert await records.claim("globex", "resp_1:call_1", pending) is None  # per tenant
            done = Record("done", "d1", "42", None)
            await records.finish("acme", "resp_1:call_1", done)
            assert await records.claim("acme", "resp_1:call_1", pending) == done
    finally:
        await store.close()


def test_an_approval_sent_to_two_replicas_runs_once_and_an_orphaned_claim_never_runs(
    gateway_factory: GatewayFactory, kit: ToolServer, redis: RedisServer
) -> None:
    policy = "tool_policy:\n  tools:\n    kit__count: {require_approval: always}\n"
    replicas = []
    for _ in range(2):
        up = ScriptedOpenAI()
        gw = gateway_factory(
            routes=routes(kit, policy),
            transport=HostRouter(upstream_test=up.handle),
            redis_url=redis.url,
            delegation_secret=SECRET,
        )
        replicas.append(openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0))
    a, b = replicas

    def approve(client: openai.OpenAI, asked: Any) -> Any:
        answer = [
            {"type": "mcp_approval_response", "approval_request_id": asked.output[-1].id, "approve": True}
        ]
        return client.responses.create(
            model="gpt-4o-mini",
            input=answer,  # type: ignore[arg-type]
            tools=[TOOL],  # type: ignore[list-item]
            previous_response_id=asked.id,
        )

    asked = a.responses.create(model="gpt-4o-mini", input="count", tools=[TOOL])  # type: ignore[list-item]
    assert approve(a, asked).output[0].output == "1"
    assert approve(b, asked).output[0].output == "1"  # the other replica: the recorded result
    assert kit.counts == {"openai": 1, "*": 1}

    # A replica claimed this call and died before recording its outcome: no one runs it again.
    orphan = a.responses.create(model="gpt-4o-mini", input="count", tools=[TOOL])  # type: ignore[list-item]
    key = f"gw:{{acme}}:toolcall:{orphan.id}:{orphan.output[-1].id}"
    assert redis_set(redis, key, Record("pending", call_digest("kit", "count", {"key": "openai"})).dumps())
    unknown = approve(b, orphan).output[0]
    assert unknown.status == "failed" and "unknown" in unknown.error.message  # type: ignore[union-attr]
    assert kit.counts == {"openai": 1, "*": 1}


def redis_set(redis: RedisServer, key: str, value: bytes) -> bool:
    import subprocess

    done = subprocess.run(
        ["redis-cli", "-p", str(redis.port), "-x", "SET", key], input=value, capture_output=True, check=True
    )
    return done.stdout.strip() == b"OK"
