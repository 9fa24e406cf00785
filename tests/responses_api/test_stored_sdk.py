"""Stored responses end to end: the real openai SDK against live gateways, in-process and on Redis.

retrieve / delete / input_items (pagination, order), tenant isolation, deleted ids, the retention TTL,
a conversation whose turns are served by three providers on two replicas sharing Redis, a chain whose
deployment was removed, and conversation memory over 40 turns.
"""

from __future__ import annotations

import json
import logging
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
import redis
from conftest import BUDGETS, KEY_ACME, KEY_GLOBEX, ROUTES, GatewayFactory, sha
from upstreams import FakeAnthropic, FakeOpenAI, HostRouter

from gateway.tokens import count_chat

KEY_ADMIN = "sk-test-acme-admin"
SECRET = "s" * 40
BUDGETS_SPEND = BUDGETS.replace("  acme:\n", "  acme:\n    budget: {usd: 100, period: monthly}\n").replace(
    "role: user}\n  globex:",
    f'role: user}}\n      - {{id: acme-admin, sha256: "{sha(KEY_ADMIN)}", role: admin}}\n  globex:',
)
ROUTES_ALL = ROUTES.replace(
    "  local: {type: mock}",
    "  local: {type: mock}\n"
    "  anth: {type: anthropic, base_url: 'http://anthropic.test', api_key: sk-ant-upstream}",
).replace(
    "models:\n",
    "models:\n  claude-haiku: {provider: anth, upstream: claude-3-5-haiku-latest,"
    " price: {input_per_mtok: 1, output_per_mtok: 5}}\n",
)
RETENTION_S = 3600
ROUTES_RETENTION = ROUTES_ALL + f"defaults:\n  response_retention_s: {RETENTION_S}\n"


class Recorder:
    """The upstreams' view: every chat body the OpenAI fake got, every Messages body Anthropic got."""

    def __init__(self) -> None:
        self.openai, self.anthropic = FakeOpenAI(), FakeAnthropic()
        self.chat: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []

    async def openai_handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"  # a chat-only OpenAI-type upstream
        self.chat.append(json.loads(request.content))
        return await self.openai.handle(request)

    async def anthropic_handle(self, request: httpx.Request) -> httpx.Response:
        self.messages.append(json.loads(request.content))
        return await self.anthropic.handle(request)

    def transport(self) -> HostRouter:
        return HostRouter(upstream_test=self.openai_handle, anthropic_test=self.anthropic_handle)


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    if request.param == "local":
        return None
    url: str = request.getfixturevalue("redis_url")
    with redis.Redis.from_url(url) as client:
        client.flushall()
    return url


def sdk(gw: Any, key: str = KEY_ACME) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def test_retrieve_delete_and_input_items(gateway_factory: GatewayFactory, backend: str | None) -> None:
    rec = Recorder()
    gw = gateway_factory(
        routes=ROUTES_RETENTION, transport=rec.transport(), redis_url=backend, delegation_secret=SECRET
    )
    client = sdk(gw)
    items: list[Any] = [{"type": "message", "role": "user", "content": f"part {i}"} for i in range(5)]
    created = client.responses.create(model="mock-chat", input=items, metadata={"k": "v"})
    got = client.responses.retrieve(created.id)
    assert got.model_dump() == created.model_dump()

    listed = client.responses.input_items.list(created.id)  # default: desc, 20
    texts = [i.content[0].text for i in listed.data]  # type: ignore[union-attr]
    assert texts == [f"part {i}" for i in reversed(range(5))]
    assert listed.has_more is False and listed.first_id == listed.data[0].id
    assert all(i.id.startswith("msg_") and i.type == "message" for i in listed.data)

    first = client.responses.input_items.list(created.id, limit=2, order="asc")
    assert [i.content[0].text for i in first.data] == ["part 0", "part 1"]  # type: ignore[union-attr]
    assert first.has_more is True and first.last_id == first.data[-1].id
    second = client.responses.input_items.list(created.id, limit=2, order="asc", after=first.last_id)
    assert [i.content[0].text for i in second.data] == ["part 2", "part 3"]  # type: ignore[union-attr]
    every = [i.id for i in client.responses.input_items.list(created.id, limit=2, order="asc")]  # auto-paged
    assert len(every) == 5 and len(set(every)) == 5

    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.input_items.list(created.id, limit=101)
    assert bad.value.body["param"] == "limit"  # type: ignore[index]

    raw = httpx.delete(
        f"{gw.base_url}/responses/{created.id}", headers={"authorization": f"Bearer {KEY_ACME}"}
    )
    assert raw.status_code == 200 and raw.json() == {"id": created.id, "object": "response", "deleted": True}
    for call in (
        lambda: client.responses.retrieve(created.id),
        lambda: client.responses.delete(created.id),
        lambda: client.responses.input_items.list(created.id),
    ):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert missing.value.body["code"] == "not_found"  # type: ignore[index]
    # A deleted id as previous_response_id: 400 previous_response_not_found, as OpenAI answers.
    with pytest.raises(openai.BadRequestError) as gone:
        client.responses.create(model="mock-chat", input="again", previous_response_id=created.id)
    assert gone.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert gone.value.body["code"] == "previous_response_not_found"  # type: ignore[index]

    # store: false stores nothing.
    unstored = client.responses.create(model="mock-chat", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    if backend is not None:  # the retention TTL is the key's expiry
        kept = client.responses.create(model="mock-chat", input="kept")
        with redis.Redis.from_url(backend) as r:
            assert RETENTION_S - 5 < r.ttl(f"gw:{{acme}}:resp:{kept.id}") <= RETENTION_S


def test_another_tenants_id_is_missing(gateway_factory: GatewayFactory, backend: str | None) -> None:
    gw = gateway_factory(routes=ROUTES_ALL, redis_url=backend, delegation_secret=SECRET)
    acme, globex = sdk(gw), sdk(gw, KEY_GLOBEX)
    created = acme.responses.create(model="mock-chat", input="acme's secret")
    with pytest.raises(openai.NotFoundError):
        globex.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        globex.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        globex.responses.delete(created.id)
    with pytest.raises(openai.BadRequestError) as other:
        globex.responses.create(model="mock-chat", input="hi", previous_response_id=created.id)
    assert other.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert other.value.body["code"] == "previous_response_not_found"  # type: ignore[index]
    assert acme.responses.retrieve(created.id).id == created.id  # still there for its owner
    # A reviewer key is refused, as on every /v1 model endpoint; no key is 401.
    with pytest.raises(openai.AuthenticationError):
        sdk(gw, "sk-nobody").responses.retrieve(created.id)


def test_three_providers_two_replicas(gateway_factory: GatewayFactory, redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as r:
        r.flushall()
    rec = Recorder()
    one = gateway_factory(
        routes=ROUTES_ALL, transport=rec.transport(), redis_url=redis_url, delegation_secret=SECRET
    )
    two = gateway_factory(
        routes=ROUTES_ALL, transport=rec.transport(), redis_url=redis_url, delegation_secret=SECRET
    )
    first = sdk(one).responses.create(model="mock-chat", input="My name is Ada.")
    assert first.output_text == "Mock reply: My name is Ada."
    second = sdk(two).responses.create(
        model="gpt-4o-mini", input="What is my name?", previous_response_id=first.id
    )
    chat = rec.chat[-1]["messages"]
    assert [m["role"] for m in chat] == ["user", "assistant", "user"]
    assert chat[0]["content"] == "My name is Ada." and chat[1]["content"] == "Mock reply: My name is Ada."
    third = sdk(one).responses.create(
        model="claude-haiku", input="Say it again.", previous_response_id=second.id, instructions="Be kind."
    )
    sent = rec.messages[-1]
    texts = [
        m["content"] if isinstance(m["content"], str) else " ".join(p.get("text", "") for p in m["content"])
        for m in sent["messages"]
    ]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert texts[0] == "My name is Ada." and texts[3] == second.output_text and texts[4] == "Say it again."
    assert "Be kind." in json.dumps(sent.get("system"))  # this turn's instructions only
    # Every turn is visible on either replica.
    for gw in (one, two):
        assert sdk(gw).responses.retrieve(third.id).previous_response_id == second.id


def test_chain_survives_a_removed_deployment(gateway_factory: GatewayFactory) -> None:
    rec = Recorder()
    gw = gateway_factory(routes=ROUTES_ALL, transport=rec.transport(), delegation_secret=SECRET)
    first = sdk(gw).responses.create(model="claude-haiku", input="Remember: 42.")
    gw.routes_path.write_text(ROUTES)  # claude-haiku (and its provider) gone
    deadline = time.monotonic() + 10
    while "claude-haiku" in {m.id for m in sdk(gw).models.list()}:
        assert time.monotonic() < deadline, "the config was not reloaded"
        time.sleep(0.05)
    second = sdk(gw).responses.create(
        model="gpt-4o-mini", input="What was it?", previous_response_id=first.id
    )
    assert second.status == "completed"
    sent = rec.chat[-1]["messages"]  # the removed deployment's turn, rebuilt for another provider
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "Remember: 42."),
        ("assistant", first.output_text),
        ("user", "What was it?"),
    ]


MEMORY_WINDOW = 700
ROUTES_MEMORY = (
    ROUTES
    + f"""  - name: chat-with-memory
    match: {{model: "assistant"}}
    targets: [{{model: gpt-4o-mini}}]
    memory: {{max_input_tokens: {MEMORY_WINDOW}, summarizer: mock-chat}}
"""
)


@pytest.mark.parametrize("truncation", ["disabled", "auto"])
def test_forty_turns_under_memory(
    gateway_factory: GatewayFactory, redis_url: str, truncation: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    with redis.Redis.from_url(redis_url) as r:
        r.flushall()  # the session's Redis: this test reads the tenant's whole spend
    rec = Recorder()
    gw = gateway_factory(
        routes=ROUTES_MEMORY,
        budgets=BUDGETS_SPEND,
        transport=rec.transport(),
        redis_url=redis_url,
        delegation_secret=SECRET,
    )
    client = sdk(gw)
    previous: str | None = None
    turn_costs = Decimal(0)
    for turn in range(40):
        raw = client.responses.with_raw_response.create(
            model="assistant",
            input=f"Turn {turn}: please remember that item number {turn} is a {'red ' * 8}ball.",
            previous_response_id=previous,
            truncation=truncation,  # type: ignore[arg-type]
        )
        previous = raw.parse().id
        turn_costs += Decimal(raw.headers["x-gateway-cost-usd"])
    sizes = [count_chat(body["messages"], "gpt-4o-mini") for body in rec.chat]
    assert len(sizes) == 40 and max(sizes) <= MEMORY_WINDOW, sizes
    last = rec.chat[-1]["messages"]
    assert "Turn 39" in last[-1]["content"]
    assert previous is not None and client.responses.retrieve(previous).status == "completed"

    spent = Decimal(0)
    deadline = time.monotonic() + 10
    while True:  # settlements run after each answer: wait (bounded) for the last
        body = httpx.get(
            gw.url + "/admin/spend",
            params={"tenant": "acme"},
            headers={"authorization": f"Bearer {KEY_ADMIN}"},
        ).json()
        spent = Decimal(str(body["spent_usd"]))
        if body["reserved_usd"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    summaries = [x for x in lines if x.get("parent_request_id") and x.get("model") == "mock-chat"]
    triggers = [x for x in lines if x.get("memory")]
    print(
        f"\n{truncation}: upstream prompt tokens max {max(sizes)} (window {MEMORY_WINDOW}), "
        f"{len(summaries)} summaries, {len(triggers)} memory turns, spent {spent} vs turns {turn_costs}"
    )
    if truncation == "auto":
        assert not summaries and triggers and all("truncated_turns" in x["memory"] for x in triggers)
        assert spent == turn_costs
        return
    assert 1 <= len(summaries) <= 8  # bounded: one per half window of growth, not one per turn
    assert len(triggers) == len(summaries)
    parents = {x["request_id"] for x in triggers}
    assert {x["parent_request_id"] for x in summaries} == parents  # each logged under its turn
    summary_costs = sum(Decimal(str(x["cost_usd"])) for x in summaries)
    assert summary_costs > 0 and spent == turn_costs + summary_costs
    assert any("Summary of the earlier conversation" in str(m["content"]) for m in last)


def test_stream_is_stored_before_it_ends(gateway_factory: GatewayFactory, redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as r:
        r.flushall()
    rec = Recorder()
    one = gateway_factory(
        routes=ROUTES_ALL, transport=rec.transport(), redis_url=redis_url, delegation_secret=SECRET
    )
    two = gateway_factory(
        routes=ROUTES_ALL, transport=rec.transport(), redis_url=redis_url, delegation_secret=SECRET
    )
    with sdk(one).responses.stream(model="gpt-4o-mini", input="Stream me.") as stream:
        for event in stream:
            if event.type == "response.completed":
                # The client holds the last event: the other replica already has the turn.
                assert sdk(two).responses.retrieve(event.response.id).output_text == "Hello there!"
        final = stream.get_final_response()
    got = sdk(two).responses.retrieve(final.id)  # (the SDK's stream helper adds parsed fields)
    assert (got.id, got.output_text, got.usage, got.status) == (
        final.id,
        final.output_text,
        final.usage,
        "completed",
    )
    items = sdk(two).responses.input_items.list(final.id)
    assert [i.content[0].text for i in items.data] == ["Stream me."]  # type: ignore[union-attr]


ROUTES_WINDOW = ROUTES_ALL.replace(
    "  gpt-4o-mini: {provider: up,", "  gpt-4o-mini: {provider: up, context_window: 300,"
)


def test_truncation_auto_keeps_within_the_context_window(gateway_factory: GatewayFactory) -> None:
    rec = Recorder()
    gw = gateway_factory(routes=ROUTES_WINDOW, transport=rec.transport(), delegation_secret=SECRET)
    client = sdk(gw)
    previous: str | None = None
    for turn in range(12):
        previous = client.responses.create(
            model="gpt-4o-mini",
            input=f"Turn {turn}: {'blue ' * 20}",
            previous_response_id=previous,
            truncation="auto",
            max_output_tokens=50,
        ).id
    sizes = [count_chat(body["messages"], "gpt-4o-mini") for body in rec.chat]
    assert max(sizes) <= 300 - 50 and "Turn 11" in rec.chat[-1]["messages"][-1]["content"]
    # disabled (the default): the same chain is refused once it no longer fits, as chat is.
    with pytest.raises(openai.BadRequestError) as refused:
        previous = None
        for turn in range(12):
            previous = client.responses.create(
                model="gpt-4o-mini", input=f"Turn {turn}: {'blue ' * 20}", previous_response_id=previous
            ).id
    assert refused.value.body["code"] == "context_length_exceeded"  # type: ignore[index]


def test_store_down_is_503(gateway_factory: GatewayFactory) -> None:
    from redis_server import RedisServer

    server = RedisServer().start()
    try:
        gw = gateway_factory(routes=ROUTES_ALL, redis_url=server.url, delegation_secret=SECRET)
        created = sdk(gw).responses.create(model="mock-chat", input="hi")
    finally:
        server.stop()
    with pytest.raises(openai.InternalServerError) as down:
        sdk(gw).responses.retrieve(created.id)
    assert down.value.status_code == 503 and down.value.body["code"] == "store_unavailable"  # type: ignore[index]


def test_a_failing_summarizer_fails_the_turn_clearly(gateway_factory: GatewayFactory) -> None:
    routes = (
        ROUTES
        + """  - name: mocked-with-memory
    match: {model: "assistant"}
    targets: [{model: mock-chat}]
    memory: {max_input_tokens: 300, summarizer: gpt-4o-mini}
"""
    )
    rec = Recorder()
    rec.openai.fail_with = httpx.Response(
        400, json={"error": {"message": "no", "type": "invalid_request_error", "code": "bad"}}
    )
    gw = gateway_factory(routes=routes, transport=rec.transport(), delegation_secret=SECRET)
    client = sdk(gw)
    previous: str | None = None
    with pytest.raises(openai.APIStatusError) as failed:
        for turn in range(20):
            previous = client.responses.create(
                model="assistant", input=f"Turn {turn}: {'green ' * 20}", previous_response_id=previous
            ).id
    print(f"\nsummarizer failure: {failed.value.status_code} {failed.value.body}")
    assert failed.value.status_code == 502  # not the client's 400: it did not write that request
    assert "summarizer" in failed.value.message and rec.chat  # it was tried, and said so
    assert previous is not None and client.responses.retrieve(previous).status == "completed"
