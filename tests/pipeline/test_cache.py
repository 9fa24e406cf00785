"""Stage 6, the response cache: the key, the policy, and hits through the live gateway."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import httpx
import openai
import pytest
from conftest import KEY_ACME, GatewayFactory, sha
from upstreams import FakeOpenAI

from gateway.config.model import CachePolicy
from gateway.metrics import Metrics
from gateway.pipeline.cache import CachedAnswer, ResponseCache, canonical_key, is_cacheable
from gateway.providers.base import Operation, Usage
from gateway.store.base import StoreUnavailableError

KEY_INITECH = "sk-test-initech"
BUDGETS = f"""
tenants:
  acme:
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
  initech:
    keys:
      - {{id: initech-1, sha256: "{sha(KEY_INITECH)}", role: user}}
"""
ROUTES = """
providers:
  up: {type: openai, base_url: "http://upstream.test/v1", api_key: sk-upstream-secret}
models:
  gpt-4o-mini: {provider: up, price: {input_per_mtok: 0.15, output_per_mtok: 0.60}}
  text-embedding-3-small: {provider: up, price: {input_per_mtok: 0.02, output_per_mtok: 0}}
routes:
  - name: cached
    match: {model: "gpt-4o-mini"}
    targets: [{model: gpt-4o-mini}]
    cache: {ttl_s: 60}
  - name: cached-always
    match: {model: "always"}
    targets: [{model: gpt-4o-mini}]
    cache: {ttl_s: 60, mode: always}
  - name: embed
    match: {model: "text-embedding-3-small"}
    targets: [{model: text-embedding-3-small}]
    cache: {ttl_s: 60}
  - name: uncached
    match: {model: "plain"}
    targets: [{model: gpt-4o-mini}]
"""
MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}

# -- the key and the policy ------------------------------------------------------------------------------


def test_key_ignores_field_order_and_fields_that_do_not_change_the_answer() -> None:
    a = canonical_key("acme", Operation.CHAT, {"model": "m", "messages": MESSAGES, "temperature": 0})
    b = canonical_key(
        "acme",
        Operation.CHAT,
        {"temperature": 0, "user": "u-1", "metadata": {"x": "y"}, "messages": MESSAGES, "model": "m"},
    )
    assert a == b
    assert re.fullmatch(r"gw:\{acme\}:cache:[0-9a-f]{64}", a)


def test_key_changes_with_tenant_stream_route_operation_and_answer_fields() -> None:
    body = {"model": "m", "messages": MESSAGES, "temperature": 0}
    base = canonical_key("acme", Operation.CHAT, body)
    others = [
        canonical_key("initech", Operation.CHAT, body),
        canonical_key("acme", Operation.CHAT, {**body, "stream": True}),
        canonical_key("acme", Operation.CHAT, body, route="other"),
        canonical_key("acme", Operation.COMPLETIONS, body),
        canonical_key("acme", Operation.CHAT, {**body, "n": 2}),
        canonical_key("acme", Operation.CHAT, {**body, "model": "m2"}),
        canonical_key("acme", Operation.CHAT, body, headers={"anthropic-beta": "x"}),
    ]
    assert base not in others and len(set(others)) == len(others)
    # stream_options only decides what the client is shown; the stored frames are the same
    streamed = {**body, "stream": True}
    assert canonical_key("acme", Operation.CHAT, streamed) == canonical_key(
        "acme", Operation.CHAT, {**streamed, "stream_options": {"include_usage": True}}
    )


def test_cacheable_only_when_deterministic_unless_the_route_says_always() -> None:
    policy = CachePolicy(ttl_s=60)
    assert is_cacheable(policy, Operation.CHAT, {"temperature": 0})
    assert is_cacheable(policy, Operation.CHAT, {"temperature": 0.9, "seed": 7})
    assert not is_cacheable(policy, Operation.CHAT, {"temperature": 0.7})
    assert not is_cacheable(policy, Operation.CHAT, {})  # OpenAI's default temperature is 1
    assert is_cacheable(policy, Operation.EMBEDDINGS, {})
    assert is_cacheable(CachePolicy(ttl_s=60, mode="always"), Operation.CHAT, {"temperature": 0.7})
    assert not is_cacheable(None, Operation.CHAT, {"temperature": 0})


def test_a_stored_answer_round_trips() -> None:
    answer = CachedAnswer("m", Usage(3, 4, 1), frames=(b"data: {}\n\n",), usage_frame=b"data: {}\n\n")
    assert CachedAnswer.loads(answer.dumps()) == answer
    body = CachedAnswer("m", None, body=b'{"a":1}')
    assert CachedAnswer.loads(body.dumps()) == body


class DownStore:
    async def cache_get(self, key: str) -> bytes | None:
        raise StoreUnavailableError("redis unavailable")

    def cache_lookup(self, key: str) -> asyncio.Future[bytes | None]:
        failed: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        failed.set_exception(StoreUnavailableError("redis unavailable"))
        return failed

    def cache_put(self, key: str, value: bytes, ttl_s: int) -> asyncio.Future[None]:
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(StoreUnavailableError("redis unavailable"))
        return failed


async def test_a_store_that_is_down_is_a_miss_and_a_put_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    cache = ResponseCache(DownStore(), Metrics())
    assert await cache.get("gw:{acme}:cache:x") is None
    cache = ResponseCache(DownStore(), Metrics())  # store trouble is logged once per interval and cache
    written = cache.put("gw:{acme}:cache:x", CachedAnswer("m", None, body=b"{}"), 60)
    assert written is not None
    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        await asyncio.sleep(0)  # the outcome's callback runs
    # the failure is logged when it comes, by the cache; nobody has to await the write
    assert [r.getMessage() for r in caplog.records if "cache put failed" in r.getMessage()] == [
        "cache put failed, answer not cached: redis unavailable"
    ]


# -- through the live gateway ----------------------------------------------------------------------------


def _client(gw: Any, key: str = KEY_ACME) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def _chat(c: openai.OpenAI, headers: dict[str, str] | None = None, **extra: Any) -> Any:
    body = {**CHAT, "temperature": 0, **extra}
    return c.chat.completions.with_raw_response.create(**body, extra_headers=headers or {})


def _metric(gw: Any, result: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    found = re.search(rf'gateway_cache_requests_total\{{result="{result}"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def gw(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> Any:
    return gateway_factory(routes=ROUTES, budgets=BUDGETS, transport=fake.transport)


def test_a_repeated_deterministic_request_is_a_free_hit(gw: Any, fake: FakeOpenAI) -> None:
    c = _client(gw)
    first = _chat(c)
    assert first.headers["x-gateway-cache"] == "miss"
    assert first.headers["x-gateway-cost-usd"] != "0"
    second = _chat(c, user="someone-else")  # ``user`` does not change the answer
    assert len(fake.requests) == 1
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.headers["x-gateway-cost-usd"] == "0"
    assert second.headers["x-gateway-model"] == "gpt-4o-mini"
    assert second.http_response.content == first.http_response.content
    assert second.parse().choices[0].message.content == "Hello there!"
    assert (_metric(gw, "miss"), _metric(gw, "hit")) == (1, 1)
    time.sleep(0.2)  # the request counter and tokens are written after the response
    metrics = httpx.get(gw.url + "/metrics").text
    assert (
        'gateway_requests_total{model="gpt-4o-mini",route="cached",status="200",tenant="acme"} 2.0' in metrics
    )
    # the hit recorded no tokens: only the miss's 12 input tokens were counted
    assert 'gateway_tokens_total{kind="input",model="gpt-4o-mini",tenant="acme"} 12.0' in metrics


def test_a_hit_never_crosses_tenants(gw: Any, fake: FakeOpenAI) -> None:
    assert _chat(_client(gw)).headers["x-gateway-cache"] == "miss"
    other = _chat(_client(gw, KEY_INITECH))
    assert other.headers["x-gateway-cache"] == "miss"
    assert len(fake.requests) == 2
    assert _chat(_client(gw, KEY_INITECH)).headers["x-gateway-cache"] == "hit"
    assert len(fake.requests) == 2


def test_the_cache_is_off_for_sampling_requests_unless_the_route_says_always(
    gw: Any, fake: FakeOpenAI
) -> None:
    # ``off``, not ``skip``: the cache does not apply, and the client asked nothing; no lookup is
    # counted, so the dashboard's hit rate (hit / (hit + miss)) is not diluted by such requests
    c = _client(gw)
    for _ in range(2):
        assert _chat(c, temperature=0.7).headers["x-gateway-cache"] == "off"
    assert len(fake.requests) == 2
    # no cache policy on the route: off too, even when the client asks to skip
    assert _chat(c, model="plain").headers["x-gateway-cache"] == "off"
    assert _chat(c, {"x-gateway-cache": "skip"}, model="plain").headers["x-gateway-cache"] == "off"
    always = [_chat(c, model="always", temperature=0.7).headers["x-gateway-cache"] for _ in range(2)]
    assert always == ["miss", "hit"]
    assert len(fake.requests) == 5
    assert (_metric(gw, "skip"), _metric(gw, "off"), _metric(gw, "miss"), _metric(gw, "hit")) == (0, 0, 1, 1)
    # only a client's own opt-out on a cached route says (and counts) skip
    assert _chat(c, {"x-gateway-cache": "skip"}).headers["x-gateway-cache"] == "skip"
    assert _metric(gw, "skip") == 1


def test_skip_bypasses_and_refresh_replaces(gw: Any, fake: FakeOpenAI) -> None:
    c = _client(gw)
    _chat(c)
    skipped = _chat(c, {"x-gateway-cache": "skip"})
    assert skipped.headers["x-gateway-cache"] == "skip"
    assert len(fake.requests) == 2
    refreshed = _chat(c, {"x-gateway-cache": "refresh"})
    assert refreshed.headers["x-gateway-cache"] == "refresh"
    assert len(fake.requests) == 3
    assert _chat(c).headers["x-gateway-cache"] == "hit"
    assert len(fake.requests) == 3
    assert _metric(gw, "refresh") == 1


def test_refresh_stores_the_fresh_answer(gateway_factory: GatewayFactory) -> None:
    answers = iter(["first", "second", "third"])

    def handle(request: httpx.Request) -> httpx.Response:
        content = next(answers)
        return httpx.Response(200, json={**_chat_json(), "choices": [_choice(content)]})

    gw = gateway_factory(routes=ROUTES, budgets=BUDGETS, transport=httpx.MockTransport(handle))
    c = _client(gw)
    assert _chat(c).parse().choices[0].message.content == "first"
    assert _chat(c, {"x-gateway-cache": "refresh"}).parse().choices[0].message.content == "second"
    assert _chat(c).parse().choices[0].message.content == "second"


@pytest.mark.parametrize("status", [400, 500])
def test_an_error_is_never_cached(gw: Any, fake: FakeOpenAI, status: int) -> None:
    c = _client(gw)
    fake.fail_with = httpx.Response(status, json={"error": {"message": "nope", "type": "x", "code": None}})
    with pytest.raises(openai.APIStatusError):
        c.chat.completions.create(**CHAT, temperature=0)
    calls = len(fake.requests)
    fake.fail_with = None
    assert _chat(c).headers["x-gateway-cache"] == "miss"
    assert len(fake.requests) == calls + 1


def _raw_stream(gw: Any, include_usage: bool = True) -> httpx.Response:
    body: dict[str, Any] = {**CHAT, "temperature": 0, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    headers = {"authorization": f"Bearer {KEY_ACME}"}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers)


def test_a_stream_is_replayed_with_the_same_frames(gw: Any, fake: FakeOpenAI) -> None:
    miss = _raw_stream(gw)
    hit = _raw_stream(gw)
    assert (miss.headers["x-gateway-cache"], hit.headers["x-gateway-cache"]) == ("miss", "hit")
    assert len(fake.requests) == 1
    # the same frames; only the gateway's cost in the usage chunk differs (a hit costs 0)
    assert '"x_gateway":{"cost_usd":"0"}' in hit.text and '"cost_usd":"0"' not in miss.text
    assert hit.text.replace('"cost_usd":"0"', "") == re.sub(r'"cost_usd":"[0-9.]+"', "", miss.text)
    assert hit.text.endswith("data: [DONE]\n\n") and '"prompt_tokens": 10' in hit.text
    # the same stored frames, without the usage chunk when the client did not ask for it
    bare = _raw_stream(gw, include_usage=False)
    assert bare.headers["x-gateway-cache"] == "hit" and '"prompt_tokens"' not in bare.text
    # a JSON request is not served from a stream's entry
    assert _chat(_client(gw)).headers["x-gateway-cache"] == "miss"
    # the SDK reads the replay like any stream
    chunks = list(_client(gw).chat.completions.create(**CHAT, temperature=0, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello there!"


def test_a_stream_that_failed_is_not_cached(gw: Any, fake: FakeOpenAI) -> None:
    fake.break_streams = True
    broken = _raw_stream(gw)
    assert '"error"' in broken.text
    fake.break_streams = False
    assert _raw_stream(gw).headers["x-gateway-cache"] == "miss"
    assert len(fake.requests) == 2


def test_embeddings_are_cached(gw: Any, fake: FakeOpenAI) -> None:
    c = _client(gw)
    first = c.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hi")
    second = c.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hi")
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    assert len(fake.requests) == 1


def _choice(content: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    return {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}


def _chat_json() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def test_anthropic_messages_are_served_from_the_cache(gw: Any, fake: FakeOpenAI) -> None:
    body = {"model": "gpt-4o-mini", "max_tokens": 50, "temperature": 0, "messages": MESSAGES}
    headers = {"x-api-key": KEY_ACME, "anthropic-version": "2023-06-01"}
    first = httpx.post(gw.url + "/v1/messages", json=body, headers=headers)
    second = httpx.post(gw.url + "/v1/messages", json=body, headers=headers)
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    assert second.json()["content"] == first.json()["content"]
    assert len(fake.requests) == 1
