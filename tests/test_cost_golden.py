"""Usage and cost on every path: recorded OpenAI and Anthropic answers give exact tokens and cost.

Each golden test runs a recorded body or stream through the live gateway and checks the token metrics
and the cost (``x-gateway-cost-usd`` for JSON, ``x_gateway.cost_usd`` in the stream's usage chunk)
against a Decimal computed here by hand from routes.yaml prices. The counted path (no upstream usage)
is checked against gateway.tokens counts, and the invariant test checks that the stored spend is the
sum of the per-request costs after a mixed run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import BUDGETS, KEY_ACME, GatewayFactory
from upstreams import FakeOpenAI, HostRouter, sse, stream_chunks

from gateway.providers.base import Operation
from gateway.tokens import count_chat, count_text

FIXTURES = Path(__file__).parent / "providers" / "fixtures"
MTOK = Decimal(1_000_000)

ROUTES = """
providers:
  up: {type: openai, base_url: "http://upstream.test/v1", api_key: sk-up}
  plain: {type: openai, base_url: "http://plain.test/v1", api_key: sk-plain}
  broken: {type: openai, base_url: "http://broken.test/v1", api_key: sk-broken}
  anth: {type: anthropic, base_url: "http://anthropic.test", api_key: sk-ant}
models:
  gpt-4o-mini:
    provider: up
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60, cached_input_per_mtok: 0.075}
  plain-chat: {provider: plain, upstream: gpt-4o-mini, price: {input_per_mtok: 0.5, output_per_mtok: 1.5}}
  broken-chat: {provider: broken, price: {input_per_mtok: 1, output_per_mtok: 1}}
  claude-haiku:
    provider: anth
    upstream: claude-3-5-haiku-latest
    price: {input_per_mtok: 0.8, output_per_mtok: 4, cached_input_per_mtok: 0.08, cache_write_per_mtok: 1}
"""
GPT = {"input": Decimal("0.15"), "cached": Decimal("0.075"), "output": Decimal("0.60")}
CLAUDE = {"input": Decimal("0.8"), "cached": Decimal("0.08"), "write": Decimal("1"), "output": Decimal("4")}
PLAIN = {"input": Decimal("0.5"), "output": Decimal("1.5")}

MESSAGES = [{"role": "user", "content": "Summarize the contract in one sentence."}]

# Recorded answers (ids and texts as the providers sent them; only the fixtures' framing is ours).
OPENAI_BODY = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The contract runs until 2027.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}
_ENV = (
    '"id":"chatcmpl-B9N1","object":"chat.completion.chunk","created":1741570283,'
    '"model":"gpt-4o-mini-2024-07-18"'
)
_DELTAS = ['"role":"assistant","content":""', '"content":"The contract"', '"content":" runs until 2027."']
_USAGE = (
    '{"prompt_tokens":2006,"completion_tokens":7,"total_tokens":2013,'
    '"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}}'
)
OPENAI_STREAM = (
    "".join(
        f'data: {{{_ENV},"choices":[{{"index":0,"delta":{{{d}}},"finish_reason":null}}],"usage":null}}\n\n'
        for d in _DELTAS
    )
    + f'data: {{{_ENV},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}],"usage":null}}\n\n'
    + f'data: {{{_ENV},"choices":[],"usage":{_USAGE}}}\n\n'
    + "data: [DONE]\n\n"
).encode()
ANTHROPIC_BODY = {
    "id": "msg_01Bv7mWq3Zf8o2CkA9dXyR4f",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [{"type": "text", "text": "The contract runs until 2027."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 200,
        "cache_read_input_tokens": 1800,
        "output_tokens": 9,
        "service_tier": "standard",
    },
}


def _openai_upstream(request: httpx.Request) -> httpx.Response:
    if json.loads(request.content).get("stream"):
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=OPENAI_STREAM)
    return httpx.Response(200, json=OPENAI_BODY)


def _anthropic_upstream(request: httpx.Request) -> httpx.Response:
    if json.loads(request.content).get("stream"):
        data = (FIXTURES / "cache_stream.sse").read_bytes()
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=data)
    return httpx.Response(200, json=ANTHROPIC_BODY)


def _plain_upstream(request: httpx.Request) -> httpx.Response:
    """An OpenAI-compatible server that never reports usage (it ignores ``include_usage``)."""
    body = json.loads(request.content)
    if body.get("stream"):
        chunks = stream_chunks(body["model"], ["Hello", " there", "!"], usage=False)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=sse(*chunks, "[DONE]")
        )
    answer = {
        "id": "chatcmpl-plain",
        "object": "chat.completion",
        "created": 1,
        "model": body["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello there!"}, "finish_reason": "stop"}
        ],
    }
    return httpx.Response(200, json=answer)


def _broken_upstream(request: httpx.Request) -> httpx.Response:
    return httpx.Response(500, json={"error": {"message": "boom", "type": "server_error", "code": None}})


def _transport(**extra: Callable[[httpx.Request], Any]) -> HostRouter:
    handlers: dict[str, Any] = {
        "upstream_test": _openai_upstream,
        "anthropic_test": _anthropic_upstream,
        "plain_test": _plain_upstream,
        "broken_test": _broken_upstream,
    }
    handlers.update(extra)
    return HostRouter(**handlers)


def _tokens(gw: Any, model: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(gw.url + "/metrics").text.splitlines():
        if line.startswith("gateway_tokens_total{") and f'model="{model}"' in line:
            kind = line.split('kind="')[1].split('"')[0]
            out[kind] = float(line.split()[-1])
    return out


def _wait_tokens(gw: Any, model: str, expected: dict[str, float]) -> None:
    """Metrics are recorded by settlement, which runs after the response: poll briefly."""
    deadline = time.monotonic() + 5
    while _tokens(gw, model) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _tokens(gw, model) == expected


def _post(gw: Any, body: dict[str, Any]) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEY_ACME}"}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=10)


def _usage_chunk(response: httpx.Response) -> dict[str, Any]:
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    with_usage = [c for c in chunks if c.get("usage")]
    assert len(with_usage) == 1 and with_usage[0]["choices"] == []
    return dict(with_usage[0])


def _cost(price: dict[str, Decimal], fresh: int, output: int, cached: int = 0, written: int = 0) -> Decimal:
    total = fresh * price["input"] + output * price["output"]
    total += cached * price.get("cached", price["input"]) + written * price.get("write", price["input"])
    return total / MTOK


# --- golden: upstream usage ----------------------------------------------------------------------


def test_openai_body_with_cached_tokens(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(routes=ROUTES, transport=_transport())
    response = _post(gw, {"model": "gpt-4o-mini", "messages": MESSAGES})
    assert response.status_code == 200
    expected = _cost(GPT, fresh=2006 - 1920, cached=1920, output=300)
    assert Decimal(response.headers["x-gateway-cost-usd"]) == expected == Decimal("0.0003369")
    _wait_tokens(gw, "gpt-4o-mini", {"input": 86, "cached": 1920, "cache_write": 0, "output": 300})


def test_openai_stream_with_usage_chunk(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(routes=ROUTES, transport=_transport())
    body = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunk = _usage_chunk(_post(gw, body))
    # the upstream's usage object reaches the client untouched; the cost rides beside it
    assert chunk["usage"]["prompt_tokens_details"] == {"cached_tokens": 1920, "audio_tokens": 0}
    expected = _cost(GPT, fresh=86, cached=1920, output=7)
    assert Decimal(chunk["x_gateway"]["cost_usd"]) == expected == Decimal("0.0001611")
    _wait_tokens(gw, "gpt-4o-mini", {"input": 86, "cached": 1920, "cache_write": 0, "output": 7})


def test_anthropic_body_with_cache_read_and_creation(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(routes=ROUTES, transport=_transport())
    response = _post(gw, {"model": "claude-haiku", "messages": MESSAGES})
    expected = _cost(CLAUDE, fresh=12, cached=1800, written=200, output=9)
    assert Decimal(response.headers["x-gateway-cost-usd"]) == expected == Decimal("0.0003896")
    # each part of the prompt under its own kind, as each has its own price
    _wait_tokens(gw, "claude-haiku", {"input": 12, "cached": 1800, "cache_write": 200, "output": 9})


def test_anthropic_stream_with_cache_read_and_creation(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(routes=ROUTES, transport=_transport())
    body = {
        "model": "claude-haiku",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunk = _usage_chunk(_post(gw, body))
    assert chunk["usage"]["prompt_tokens"] == 2012 and chunk["usage"]["completion_tokens"] == 4
    expected = _cost(CLAUDE, fresh=12, cached=1800, written=200, output=4)
    assert Decimal(chunk["x_gateway"]["cost_usd"]) == expected == Decimal("0.0003696")
    _wait_tokens(gw, "claude-haiku", {"input": 12, "cached": 1800, "cache_write": 200, "output": 4})


def test_sdk_exposes_the_cost_and_the_usage_chunk_only_when_asked(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(routes=ROUTES, transport=_transport())
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    chunks = list(
        c.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.usage is not None and last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 1920
    assert (last.model_extra or {})["x_gateway"] == {"cost_usd": "0.0001611"}
    bare = list(c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert all(ch.usage is None and "x_gateway" not in (ch.model_extra or {}) for ch in bare)


# --- counted: no upstream usage ------------------------------------------------------------------


def _counted(content: str) -> tuple[int, int]:
    """What the gateway counts for ``plain-chat``: the request's estimate and the text sent."""
    return count_chat(MESSAGES, "gpt-4o-mini"), count_text(content, "gpt-4o-mini")


def test_body_without_usage_is_counted(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(routes=ROUTES, transport=_transport())
    response = _post(gw, {"model": "plain-chat", "messages": MESSAGES})
    prompt, completion = _counted("Hello there!")
    assert Decimal(response.headers["x-gateway-cost-usd"]) == _cost(PLAIN, fresh=prompt, output=completion)
    _wait_tokens(gw, "plain-chat", {"input": prompt, "cached": 0, "cache_write": 0, "output": completion})


def test_stream_without_usage_is_counted_and_the_usage_chunk_synthesized(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(routes=ROUTES, transport=_transport())
    body = {
        "model": "plain-chat",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = _post(gw, body)
    chunk = _usage_chunk(response)
    prompt, completion = _counted("Hello there!")
    assert chunk["usage"]["prompt_tokens"] == prompt and chunk["usage"]["completion_tokens"] == completion
    # the synthesized chunk looks like the stream's own chunks
    assert (chunk["id"], chunk["model"], chunk["created"]) == ("chatcmpl-up-s", "gpt-4o-mini", 1700000000)
    assert Decimal(chunk["x_gateway"]["cost_usd"]) == _cost(PLAIN, fresh=prompt, output=completion)
    assert response.text.endswith("data: [DONE]\n\n")
    _wait_tokens(gw, "plain-chat", {"input": prompt, "cached": 0, "cache_write": 0, "output": completion})
    # the counted chat prompt is the admission estimate without its margin
    from gateway.pipeline.admit import prompt_tokens

    assert prompt == prompt_tokens(Operation.CHAT, {"messages": MESSAGES}, "gpt-4o-mini")


def test_client_disconnect_mid_stream_is_billed(gateway_factory: GatewayFactory) -> None:
    fake = FakeOpenAI()
    fake.gate = threading.Event()  # the upstream sends two chunks, then waits: usage never comes
    gw = gateway_factory(routes=ROUTES, transport=_transport(upstream_test=fake.handle))
    body = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"authorization": f"Bearer {KEY_ACME}"}
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, headers=headers, timeout=10) as s:
        lines = s.iter_lines()
        assert next(lines).startswith("data: ")
        assert '"Hello"' in next(line for line in lines if line.startswith("data: "))
    prompt, completion = _counted("Hello")
    _wait_tokens(gw, "gpt-4o-mini", {"input": prompt, "cached": 0, "cache_write": 0, "output": completion})
    fake.gate.set()
    metrics = httpx.get(gw.url + "/metrics").text
    cost = next(
        line
        for line in metrics.splitlines()
        if line.startswith("gateway_cost_usd_total{") and 'model="gpt-4o-mini"' in line
    )
    assert float(cost.split()[-1]) == pytest.approx(float(_cost(GPT, fresh=prompt, output=completion)))
    assert float(cost.split()[-1]) > 0


# --- invariant: stored spend == sum of per-request costs -----------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(json.loads(record.getMessage()))


@pytest.fixture
def access_log() -> Iterator[_Lines]:
    handler = _Lines()
    logger = logging.getLogger("gateway.access")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_stored_spend_is_the_sum_of_request_costs(
    gateway_factory: GatewayFactory, access_log: _Lines
) -> None:
    budgets = BUDGETS.replace("  acme:\n", "  acme:\n    budget: {usd: 100, period: daily}\n")
    gw = gateway_factory(
        routes=ROUTES, budgets=budgets, transport=_transport(upstream_test=FakeOpenAI().handle)
    )
    seen: dict[str, Decimal] = {}  # request id -> cost the client was told
    ids: list[str] = []
    for i in range(24):
        model = ("gpt-4o-mini", "claude-haiku", "plain-chat", "broken-chat")[i % 4]
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}
        if i % 3:
            body["stream"] = True
            if i % 3 == 1:
                body["stream_options"] = {"include_usage": True}
        response = _post(gw, body)
        ids.append(response.headers["x-request-id"])
        if model == "broken-chat":
            assert response.status_code >= 500 or '"error"' in response.text
        elif not body.get("stream"):
            seen[ids[-1]] = Decimal(response.headers["x-gateway-cost-usd"])
        elif body.get("stream_options"):
            seen[ids[-1]] = Decimal(_usage_chunk(response)["x_gateway"]["cost_usd"])

    deadline = time.monotonic() + 5
    while {r["request_id"] for r in access_log.records} < set(ids) and time.monotonic() < deadline:
        time.sleep(0.02)
    logged = {r["request_id"]: Decimal(r["cost_usd"]) for r in access_log.records if r["request_id"] in ids}
    assert set(logged) == set(ids)
    # what the client was told is what was logged, and failed requests cost nothing
    assert all(logged[rid] == cost for rid, cost in seen.items())
    assert all(logged[rid] == 0 for rid in ids[3::4])
    assert all(logged[rid] > 0 for rid in ids if rid not in ids[3::4])
    expected_nano = sum(math.ceil(cost * 10**9) for cost in logged.values())

    from gateway.config.model import Budget
    from gateway.pipeline.admit import period_start
    from gateway.store.base import ScopeLimits

    state = gw.app.state.gateway  # type: ignore[attr-defined]

    async def spent() -> int:
        scope = ScopeLimits(scope="t", period_start=period_start(Budget(100, "daily"), time.time()))
        return int((await state.store.spend("acme", scope)).spent_nano)

    # settlement follows the log line; let the last ones land
    deadline = time.monotonic() + 5
    while asyncio.run(spent()) != expected_nano and time.monotonic() < deadline:
        time.sleep(0.02)
    assert asyncio.run(spent()) == expected_nano


def test_messages_stream_without_upstream_usage_reports_counted_tokens(
    gateway_factory: GatewayFactory,
) -> None:
    """``/v1/messages`` renders the counted usage in ``message_delta`` like upstream usage."""
    gw = gateway_factory(routes=ROUTES, transport=_transport())
    body = {"model": "plain-chat", "max_tokens": 50, "messages": MESSAGES, "stream": True}
    headers = {"x-api-key": KEY_ACME, "anthropic-version": "2023-06-01"}
    response = httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=10)
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    delta = next(e for e in events if e["type"] == "message_delta")
    prompt, completion = _counted("Hello there!")
    assert delta["usage"]["output_tokens"] == completion
    assert delta["usage"]["input_tokens"] == prompt
