"""Admission through a live gateway (in-process store): limits, budgets, headers, SDK behaviour."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

import httpx
import openai
import pytest
import yaml
from conftest import KEY_ACME, ROUTES, GatewayFactory, sha
from upstreams import FakeOpenAI

from gateway import tokens
from gateway.config.model import Budget, Defaults, Limits
from gateway.config.parse import parse_routes
from gateway.pipeline.admit import Admitter, go_duration, period_start
from gateway.pipeline.auth import Principal
from gateway.pipeline.budget_refusal import budget_refusal, largest_output
from gateway.store.memory import MemoryStore


def budgets(tenant_extra: str = "", key_extra: str = "") -> str:
    return f"""
tenants:
  acme:
    {tenant_extra}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user {key_extra}}}
"""


def hits(gw, status: str) -> float:  # type: ignore[no-untyped-def]
    total = 0.0
    for line in httpx.get(gw.url + "/metrics").text.splitlines():
        if line.startswith("gateway_requests_total") and f'status="{status}"' in line:
            total += float(line.split()[-1])
    return total


def chat(c: openai.OpenAI, **kw):  # type: ignore[no-untyped-def]
    return c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], **kw
    )


def test_rpm_limit_refuses_with_retry_after_and_headers(gateway_factory: GatewayFactory) -> None:
    upstream = FakeOpenAI()
    gw = gateway_factory(routes=ROUTES, budgets=budgets("limits: {rpm: 3}"), transport=upstream.transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    remaining = [int(chat(c).headers["x-ratelimit-remaining-requests"]) for _ in range(3)]
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as info:
        chat(c)
    err = info.value
    assert err.code == "rate_limit_exceeded"
    assert 1 <= int(err.response.headers["retry-after"]) <= 60
    assert int(err.response.headers["retry-after-ms"]) > 0
    assert err.response.headers["x-ratelimit-limit-requests"] == "3"
    assert len(upstream.requests) == 3


def test_key_limit_is_tighter_than_tenant_limit(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(
        routes=ROUTES,
        budgets=budgets("limits: {rpm: 100, tpm: 1000000}", ", limits: {rpm: 2}"),
        transport=FakeOpenAI().transport,
    )
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    headers = chat(c).headers
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-limit-tokens"] == "1000000"
    chat(c)
    with pytest.raises(openai.RateLimitError):
        chat(c)


def test_budget_exhaustion_is_429_insufficient_quota_not_retried_by_sdk(
    gateway_factory: GatewayFactory,
) -> None:
    upstream = FakeOpenAI()
    # Worst cases: ~11 prompt tokens + 1000 output tokens at $0.60/Mtok ≈ $0.0006 (fits $0.001);
    # then 1700 output tokens ≈ $0.00102 (does not fit, even though only $0.0000036 was spent).
    gw = gateway_factory(
        routes=ROUTES, budgets=budgets("budget: {usd: 0.001, period: daily}"), transport=upstream.transport
    )
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=2)
    assert chat(c, max_tokens=1000).headers["x-gateway-cost-usd"] == "0.0000036"
    before = hits(gw, "429")
    with pytest.raises(openai.RateLimitError) as info:
        chat(c, max_tokens=1700)
    err = info.value
    assert err.code == "budget_exceeded" and err.type == "insufficient_quota"
    assert err.response.headers["x-should-retry"] == "false"
    assert hits(gw, "429") - before == 1, "the SDK did not retry a budget refusal"
    assert len(upstream.requests) == 1


def test_a_budget_refusal_says_the_worst_case_what_is_left_and_the_max_tokens_that_fits(
    gateway_factory: GatewayFactory,
) -> None:
    # The case: a $0.0001 budget, nothing spent, and the first request is refused because
    # its worst case (no max_tokens: the model's maximum output) does not fit. "Spent" would be false.
    upstream = FakeOpenAI()
    gw = gateway_factory(
        routes=ROUTES, budgets=budgets("budget: {usd: 0.0001, period: daily}"), transport=upstream.transport
    )
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        chat(c)
    message = info.value.message
    assert "spent" not in message, message
    assert "max_tokens was not set" in message and "remaining budget for this period ($0.0001)" in message
    found = re.search(r"A smaller max_tokens would fit: at most (\d+)\.", message)
    assert found, message
    fits = int(found.group(1))
    print(f"\nrefusal: {message}")
    assert 100 < fits < 170  # ~(100,000 - prompt) nano-USD / 600 nano-USD per output token
    with pytest.raises(openai.RateLimitError) as info:
        chat(c, max_tokens=fits + 1)  # the bound given is exact: one more does not fit
    assert f"max_tokens {fits + 1})" in info.value.message
    assert chat(c, max_tokens=fits).status_code == 200
    assert len(upstream.requests) == 1


def test_a_spent_budget_and_a_prompt_too_large_say_so() -> None:
    mini = parse_routes(yaml.safe_load(ROUTES))[0].models["gpt-4o-mini"]
    spent = budget_refusal(
        "key", 0, 5_000, prompt_tokens=10, output_tokens=5, choices=1, bound_added=False, candidates=[mini]
    )
    assert spent.message.startswith("The key's budget for this period is spent")
    # 1000 prompt tokens at $0.15/Mtok = 150,000 nano-USD, with 100,000 left: no output bound helps
    big = budget_refusal(
        "tenant",
        100_000,
        200_000,
        prompt_tokens=1000,
        output_tokens=100,
        choices=2,
        bound_added=False,
        candidates=[mini],
    )
    assert "No max_tokens fits" in big.message and "for each of 2 choices" in big.message
    assert largest_output(100_000, 10, 2, [mini]) == (100_000 - 1_500) // 1_200


def test_missing_max_tokens_gets_the_reserved_bound_upstream(gateway_factory: GatewayFactory) -> None:
    upstream = FakeOpenAI()
    routes = ROUTES.replace(
        "gpt-4o-mini: {provider: up,", "gpt-4o-mini: {provider: up, max_output_tokens: 512,"
    )
    gw = gateway_factory(
        routes=routes, budgets=budgets("budget: {usd: 10, period: monthly}"), transport=upstream.transport
    )
    chat(openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0))
    assert upstream.json()["max_tokens"] == 512


def test_the_reserved_bound_reaches_a_reasoning_model_as_max_completion_tokens(
    gateway_factory: GatewayFactory,
) -> None:
    """o-series and gpt-5 models answer 400 to ``max_tokens``: the gateway's bound must not break them."""
    upstream = FakeOpenAI()
    reasoning = "gpt-4o-mini: {provider: up, upstream: o4-mini, max_output_tokens: 512,"
    routes = ROUTES.replace("gpt-4o-mini: {provider: up,", reasoning)
    gw = gateway_factory(
        routes=routes, budgets=budgets("budget: {usd: 10, period: monthly}"), transport=upstream.transport
    )
    chat(openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0))
    sent = upstream.json()
    assert sent["model"] == "o4-mini"
    assert sent["max_completion_tokens"] == 512 and "max_tokens" not in sent


def test_period_boundaries_are_utc() -> None:
    now = datetime(2026, 11, 25, 15, 30, tzinfo=UTC).timestamp()  # a Wednesday
    assert period_start(Budget(1, "daily"), now) == datetime(2026, 11, 25, tzinfo=UTC).timestamp()
    assert period_start(Budget(1, "weekly"), now) == datetime(2026, 11, 23, tzinfo=UTC).timestamp()
    assert period_start(Budget(1, "monthly"), now) == datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    assert period_start(Budget(1, "total"), now) == 0


def test_scopes_are_worked_out_once_per_key_and_day() -> None:
    admitter = Admitter(MemoryStore(), MemoryStore(), Defaults())
    key = Principal(
        tenant="acme", key_id="acme-1", role="user", models=None, tenant_budget=Budget(5, "daily")
    )
    wednesday = datetime(2026, 11, 25, 15, 30, tzinfo=UTC).timestamp()
    scopes = admitter.scopes(key, wednesday)
    assert [(s.scope, s.budget_nano, s.period_start) for s in scopes] == [
        ("t", 5_000_000_000, datetime(2026, 11, 25, tzinfo=UTC).timestamp())
    ]
    assert admitter.scopes(key, wednesday + 3600) is scopes  # same key, same day: kept
    thursday = admitter.scopes(key, wednesday + 86400)
    assert thursday[0].period_start == datetime(2026, 11, 26, tzinfo=UTC).timestamp()
    # the same key id with a changed record (budgets.yaml reloaded): worked out again
    limited = Principal(tenant="acme", key_id="acme-1", role="user", models=None, key_limits=Limits(rpm=7))
    assert [(s.scope, s.rpm) for s in admitter.scopes(limited, wednesday + 86400)] == [("k:acme-1", 7)]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.012, "12ms"), (1, "1s"), (59.2, "1m0s"), (360, "6m0s"), (61, "1m1s")]
)
def test_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
    assert math.isfinite(seconds)


def test_a_long_system_prompt_is_counted_once_per_tenant(gateway_factory: GatewayFactory) -> None:
    """Admission keeps the token counts of long texts under the tenant (gateway.tokens.REMEMBERED)."""
    upstream = FakeOpenAI()
    gw = gateway_factory(
        routes=ROUTES, budgets=budgets("limits: {tpm: 1000000}"), transport=upstream.transport
    )
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    system = "You answer questions about the shop's orders, returns and opening hours. " * 10
    tokens.REMEMBERED.clear()
    for question in ("Where is my order?", "When do you open?"):
        c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        )
    kept = list(tokens.REMEMBERED._counts)  # one entry: the system prompt, under acme; questions are short
    assert [(scope, text) for scope, _, text in kept] == [("acme", system)]
