"""``/v1/messages`` → an ``anthropic`` deployment, natively: the real anthropic SDK as the client, a
recording Anthropic upstream on loopback (tests/anthropic_upstream.py).

What is checked: the upstream gets the SDK's bytes (cache_control, thinking, documents, server tools);
the SDK gets thinking blocks and signatures, citations and server-tool blocks as the upstream sent them,
streamed and not; cache reads and writes are priced at their own rates in the cost header (a stream's
cost: its closing SSE comment), the metrics (``kind`` label), the spend and the ledger; an Anthropic
4xx reaches the SDK as Anthropic wrote it; fallbacks to an OpenAI-form deployment still translate;
the response cache keeps native answers for ``/v1/messages`` only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic_sdk import sdk_httpx
from anthropic_upstream import (
    SIGNATURE,
    THINKING_MESSAGE,
    THINKING_STREAM,
    Answer,
    RecordingAnthropic,
    error_answer,
)
from conftest import KEY_ACME, GatewayFactory, free_port, sha
from sqlalchemy import create_engine, select

from gateway.ledger.schema import ledger

ADMIN = "admin-secret"
BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 100, period: monthly}}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
"""
PRICE = "{input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3, cache_write_per_mtok: 3.75}"
# 12 fresh × $3 + 1800 cache reads × $0.30 + 200 cache writes × $3.75 + 42 output × $15, per Mtok
COST = Decimal("0.001956")
assert (12 * Decimal(3) + 1800 * Decimal("0.3") + 200 * Decimal("3.75") + 42 * Decimal(15)) / 10**6 == COST


def routes(upstream: str, dead: str) -> str:
    return f"""
providers:
  anth:
    type: anthropic
    base_url: "{upstream}"
    api_key: sk-ant-upstream
    headers: {{anthropic-beta: files-api-2025-04-14}}
  dead: {{type: anthropic, base_url: "{dead}", api_key: k}}
  local: {{type: mock}}
models:
  claude-sonnet-4-5: {{provider: anth, price: {PRICE}}}
  claude-alias: {{provider: anth, upstream: claude-sonnet-4-5, price: {PRICE}}}
  claude-cached: {{provider: anth, upstream: claude-sonnet-4-5, price: {PRICE}}}
  claude-dead: {{provider: dead, price: {PRICE}}}
  mock-chat: {{provider: local, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
routes:
  - name: with-fallback
    match: {{model: claude-flaky}}
    targets: [{{model: claude-dead}}]
    fallbacks: [mock-chat]
    retry: {{attempts: 1}}
  - name: cached
    match: {{model: claude-cached}}
    targets: [{{model: claude-cached}}]
    cache: {{ttl_s: 60, mode: always}}
"""


@pytest.fixture
def upstream() -> Iterator[RecordingAnthropic]:
    server = RecordingAnthropic().start()
    server.script(Answer(body=THINKING_MESSAGE))
    yield server
    server.stop()


@pytest.fixture
def gw(gateway_factory: GatewayFactory, upstream: RecordingAnthropic, tmp_path: Path) -> Any:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    return gateway_factory(
        routes=routes(upstream.url, dead),
        budgets=BUDGETS,
        admin_key=ADMIN,
        ledger_url=f"sqlite:///{tmp_path}/ledger.sqlite3",
    )


class Sent:
    """The raw bytes the SDK put on the wire, seen through its http client's request hook."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []

    def hook(self, request: Any) -> None:
        self.bodies.append(request.read())
        self.headers.append({k.lower(): v for k, v in request.headers.items()})


def client(gw: Any, sent: Sent | None = None, **kw: Any) -> anthropic.Anthropic:
    hooks = {"request": [sent.hook]} if sent is not None else {}
    http_client = sdk_httpx.Client(event_hooks=hooks, timeout=20)
    return anthropic.Anthropic(
        base_url=gw.url, api_key=KEY_ACME, max_retries=0, http_client=http_client, **kw
    )


PDF = (
    "JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoKdHJhaWxlcgo8PC9Sb290IDEgMCBSPj4KJSVFT0YK"
)
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather by city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        "cache_control": {"type": "ephemeral"},
    },
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 2, "allowed_domains": ["example.org"]},
]
SYSTEM: list[Any] = [
    {"type": "text", "text": "You are a geographer."},
    {
        "type": "text",
        "text": "Long shared context " * 50,
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    },
]
MESSAGES: list[Any] = [
    {
        "role": "user",
        "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}},
            {
                "type": "document",
                "source": {
                    "type": "text",
                    "media_type": "text/plain",
                    "data": "Paris is the capital of France.",
                },
                "title": "Atlas",
                "citations": {"enabled": True},
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": "What is the capital?"},
        ],
    }
]


def create_kwargs(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 2048,
        "system": SYSTEM,
        "messages": MESSAGES,
        "tools": TOOLS,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "u-1"},
        "extra_headers": {"anthropic-beta": "interleaved-thinking-2025-05-14"},
    }


def without_model(raw: bytes) -> dict[str, Any]:
    body = dict(json.loads(raw))
    body.pop("model")
    return body


# -- the request goes upstream as the SDK sent it ----------------------------------------------------------


def test_body_reaches_the_upstream_byte_for_byte(gw: Any, upstream: RecordingAnthropic) -> None:
    sent = Sent()
    raw = client(gw, sent).messages.with_raw_response.create(**create_kwargs("claude-sonnet-4-5"))
    message = raw.parse()
    # the model name is the upstream's own: not a byte changed
    assert upstream.last.raw == sent.bodies[-1]
    assert upstream.last.path == "/v1/messages"
    headers = upstream.last.headers
    assert headers["x-api-key"] == "sk-ant-upstream" and "authorization" not in headers
    assert headers["anthropic-version"] == sent.headers[-1]["anthropic-version"]  # the SDK's, forwarded
    assert headers["anthropic-beta"] == "files-api-2025-04-14,interleaved-thinking-2025-05-14"
    # the answer as the upstream sent it: thinking with its signature, citations, server-tool blocks
    assert raw.http_response.content == json.dumps(THINKING_MESSAGE).encode()
    assert message.content[0].type == "thinking" and message.content[0].signature == SIGNATURE
    assert message.content[1].type == "redacted_thinking"
    assert message.content[2].citations is not None and message.content[2].citations[0].cited_text
    assert [b.type for b in message.content[3:]] == ["server_tool_use", "web_search_tool_result"]
    assert message.usage.cache_read_input_tokens == 1800 and message.usage.cache_creation_input_tokens == 200
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == COST
    assert raw.headers["x-gateway-model"] == "claude-sonnet-4-5"


def test_only_the_model_name_changes_for_another_upstream_name(gw: Any, upstream: RecordingAnthropic) -> None:
    sent = Sent()
    client(gw, sent).messages.create(**create_kwargs("claude-alias"))
    received = upstream.last.json()
    assert received["model"] == "claude-sonnet-4-5"
    assert without_model(upstream.last.raw) == without_model(sent.bodies[-1])
    # the keys in the client's order: only the value of "model" was replaced
    assert list(received) == list(json.loads(sent.bodies[-1]))


# -- streams ----------------------------------------------------------------------------------------------


def test_stream_events_come_back_as_the_upstream_sent_them(gw: Any, upstream: RecordingAnthropic) -> None:
    upstream.script(Answer(events=THINKING_STREAM))
    sent = Sent()
    with client(gw, sent).messages.stream(**create_kwargs("claude-sonnet-4-5")) as stream:
        final = stream.get_final_message()
    assert upstream.last.raw == sent.bodies[-1]
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == "Capital is Paris." and final.content[0].signature == SIGNATURE
    assert final.content[1].type == "text" and final.content[1].text == "Paris"
    assert final.usage.cache_read_input_tokens == 1800 and final.usage.output_tokens == 42

    # the same on the wire: every event byte for byte, then the cost as an SSE comment
    body = json.loads(sent.bodies[-1])
    response = httpx.post(gw.url + "/v1/messages", json=body, headers={"x-api-key": KEY_ACME}, timeout=20)
    expected = Answer(events=THINKING_STREAM).sse()
    assert response.content.startswith(expected)
    assert response.content[len(expected) :] == f": x-gateway-cost-usd {COST}\n\n".encode()


def test_cache_tokens_priced_in_metrics_spend_and_ledger(gw: Any, upstream: RecordingAnthropic) -> None:
    c = client(gw)
    raw = c.messages.with_raw_response.create(**create_kwargs("claude-sonnet-4-5"))
    ids = [raw.headers["x-request-id"]]
    upstream.script(Answer(events=THINKING_STREAM))
    with c.messages.with_streaming_response.create(
        **create_kwargs("claude-sonnet-4-5"), stream=True
    ) as streamed:
        ids.append(streamed.headers["x-request-id"])
        assert "x-gateway-cost-usd" not in streamed.headers  # known only at the stream's end
        text = b"".join(streamed.iter_bytes())
    assert text.endswith(f": x-gateway-cost-usd {COST}\n\n".encode())

    expected = {"input": 24.0, "cached": 3600.0, "cache_write": 400.0, "output": 84.0}
    deadline = time.monotonic() + 5
    while tokens(gw, "claude-sonnet-4-5") != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tokens(gw, "claude-sonnet-4-5") == expected
    assert cost_metric(gw, "claude-sonnet-4-5") == pytest.approx(float(2 * COST))

    spend = httpx.get(
        gw.url + "/admin/spend", params={"tenant": "acme"}, headers={"authorization": f"Bearer {ADMIN}"}
    ).json()
    assert Decimal(str(spend["spent_usd"])) == 2 * COST and spend["reserved_usd"] == 0

    rows = ledger_rows(gw, ids)
    assert [(r.input_tokens, r.cached_tokens, r.cache_write_tokens, r.output_tokens) for r in rows] == [
        (2012, 1800, 200, 42)
    ] * 2
    assert [Decimal(r.cost_nano) / 10**9 for r in rows] == [COST, COST]


def test_a_stream_cut_mid_way_is_billed_what_it_reported(gw: Any, upstream: RecordingAnthropic) -> None:
    """Cut after the thinking deltas: message_start's input and cache counts are billed, plus the
    thinking streamed so far (counted); the SDK sees an error, not a silent end."""
    upstream.script(Answer(events=THINKING_STREAM, cut_after=5))
    with (
        pytest.raises(anthropic.APIStatusError),
        client(gw).messages.stream(**create_kwargs("claude-sonnet-4-5")) as stream,
    ):
        stream.get_final_message()
    deadline = time.monotonic() + 5
    while not tokens(gw, "claude-sonnet-4-5") and time.monotonic() < deadline:
        time.sleep(0.05)
    counted = tokens(gw, "claude-sonnet-4-5")
    assert counted["input"] == 12 and counted["cached"] == 1800 and counted["cache_write"] == 200
    assert 0 < counted["output"] < 42  # "Capital is Paris." counted, not the 42 never reported


# -- errors and fallbacks ---------------------------------------------------------------------------------


def test_an_anthropic_4xx_reaches_the_sdk_as_anthropic_wrote_it(
    gw: Any, upstream: RecordingAnthropic
) -> None:
    answer = error_answer(
        400, "invalid_request_error", "thinking.budget_tokens: must be less than max_tokens"
    )
    upstream.script(answer)
    with pytest.raises(anthropic.BadRequestError) as info:
        client(gw).messages.create(**create_kwargs("claude-sonnet-4-5"))
    assert info.value.body == answer.body
    assert info.value.response.content == json.dumps(answer.body).encode()


def test_fallback_to_a_mock_deployment_is_translated(gw: Any) -> None:
    raw = client(gw).messages.with_raw_response.create(
        model="claude-flaky",
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "Salut", "cache_control": {"type": "ephemeral"}}],
            }
        ],
    )
    message = raw.parse()
    assert raw.headers["x-gateway-model"] == "mock-chat"
    assert message.content[0].type == "text" and message.content[0].text.startswith("Mock reply")
    assert message.id.startswith("msg_")


def test_a_request_only_anthropic_can_express_is_not_sent_translated(gw: Any) -> None:
    """A document cannot reach the mock: the failing Anthropic deployment's error is the answer."""
    with pytest.raises(anthropic.APIStatusError) as info:
        client(gw).messages.create(model="claude-flaky", max_tokens=64, messages=MESSAGES)
    assert info.value.status_code == 502


def test_only_the_openai_form_for_openai_routes(gw: Any) -> None:
    """Without an Anthropic deployment in the plan, what OpenAI chat cannot carry is a 400 naming it."""
    with pytest.raises(anthropic.BadRequestError) as info:
        client(gw).messages.create(model="mock-chat", max_tokens=64, messages=MESSAGES)
    assert "messages[0].content[0].type" in str(info.value.body)


# -- the response cache -----------------------------------------------------------------------------------


def test_native_answers_are_cached_for_messages_clients(gw: Any, upstream: RecordingAnthropic) -> None:
    c = client(gw)
    first = c.messages.with_raw_response.create(**create_kwargs("claude-cached"))
    second = c.messages.with_raw_response.create(**create_kwargs("claude-cached"))
    assert first.headers["x-gateway-cache"] == "miss" and second.headers["x-gateway-cache"] == "hit"
    assert (
        second.http_response.content == first.http_response.content == json.dumps(THINKING_MESSAGE).encode()
    )
    assert second.headers["x-gateway-cost-usd"] == "0"
    # a different cache_control is a different request
    changed = create_kwargs("claude-cached")
    changed["system"] = [{**SYSTEM[0], "cache_control": {"type": "ephemeral"}}, SYSTEM[1]]
    assert c.messages.with_raw_response.create(**changed).headers["x-gateway-cache"] == "miss"
    assert len(upstream.requests) == 2
    # an OpenAI client asking the same in its own form never gets the Anthropic body
    oai = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    answer = oai.chat.completions.create(
        model="claude-cached", max_tokens=2048, messages=[{"role": "user", "content": "What is the capital?"}]
    )
    assert answer.object == "chat.completion" and answer.choices[0].message.content == "Paris"


def test_native_streams_are_cached_as_sent(gw: Any, upstream: RecordingAnthropic) -> None:
    upstream.script(Answer(events=THINKING_STREAM))
    body = {**json.loads(json.dumps(create_kwargs("claude-cached"), default=str)), "stream": True}
    body.pop("extra_headers")
    replies = [
        httpx.post(gw.url + "/v1/messages", json=body, headers={"x-api-key": KEY_ACME}, timeout=20)
        for _ in range(2)
    ]
    assert [r.headers["x-gateway-cache"] for r in replies] == ["miss", "hit"]
    events = Answer(events=THINKING_STREAM).sse()
    assert replies[0].content == events + f": x-gateway-cost-usd {COST}\n\n".encode()
    assert replies[1].content == events + b": x-gateway-cost-usd 0\n\n"
    assert len(upstream.requests) == 1


# -- count_tokens -----------------------------------------------------------------------------------------


def test_count_tokens_native_and_estimated(gw: Any, upstream: RecordingAnthropic) -> None:
    c = client(gw)
    counted = c.messages.count_tokens(
        model="claude-alias",
        system=SYSTEM,
        messages=MESSAGES,
        tools=TOOLS,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert counted.input_tokens == 1234
    assert upstream.last.path == "/v1/messages/count_tokens"
    forwarded = upstream.last.json()
    assert forwarded["model"] == "claude-sonnet-4-5" and forwarded["tools"] == TOOLS
    assert forwarded["system"] == SYSTEM and forwarded["messages"] == MESSAGES

    estimated = c.messages.count_tokens(
        model="mock-chat", messages=[{"role": "user", "content": "Hello there"}]
    )
    from gateway.tokens import count_chat

    assert estimated.input_tokens == count_chat([{"role": "user", "content": "Hello there"}], "mock-chat")
    # not charged
    spend = httpx.get(
        gw.url + "/admin/spend", params={"tenant": "acme"}, headers={"authorization": f"Bearer {ADMIN}"}
    ).json()
    assert spend["spent_usd"] == 0
    # authenticated
    refused = httpx.post(gw.url + "/v1/messages/count_tokens", json={"model": "mock-chat", "messages": []})
    assert refused.status_code == 401 and refused.json()["type"] == "error"


# -- helpers ----------------------------------------------------------------------------------------------


def tokens(gw: Any, model: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(gw.url + "/metrics").text.splitlines():
        if line.startswith("gateway_tokens_total{") and f'model="{model}"' in line:
            out[line.split('kind="')[1].split('"')[0]] = float(line.split()[-1])
    return out


def cost_metric(gw: Any, model: str) -> float:
    for line in httpx.get(gw.url + "/metrics").text.splitlines():
        if line.startswith("gateway_cost_usd_total{") and f'model="{model}"' in line:
            return float(line.split()[-1])
    return 0.0


def ledger_rows(gw: Any, ids: list[str]) -> list[Any]:
    state = gw.app.state.gateway
    deadline = time.monotonic() + 10
    engine = create_engine(state.settings.ledger_url)
    while True:
        state.ledger.flush(timeout_s=1)
        with engine.connect() as conn:
            rows = list(conn.execute(select(ledger).where(ledger.c.request_id.in_(ids))))
        if len(rows) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    engine.dispose()
    return sorted(rows, key=lambda r: ids.index(r.request_id))
