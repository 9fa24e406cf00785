"""Pipeline stages on `/v1/responses`: the budget reservation covers `max_output_tokens`, and the cache
answers deterministic requests (a hit is a new response, kept and continued like any other)."""

from __future__ import annotations

import openai
import pytest
from conftest import KEY_ACME, GatewayFactory, sha

ROUTES = """
providers:
  local: {type: mock}
models:
  mock-chat: {provider: local, price: {input_per_mtok: 2.0, output_per_mtok: 4.0}}
routes:
  - name: cached
    match: {model: cached}
    targets: [{model: mock-chat}]
    cache: {ttl_s: 300}
"""
BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 0.01, period: daily}}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
"""


@pytest.fixture
def api(gateway_factory: GatewayFactory) -> openai.OpenAI:
    gw = gateway_factory(routes=ROUTES, budgets=BUDGETS)
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)


def test_the_reservation_covers_max_output_tokens(api: openai.OpenAI) -> None:
    # 10 000 output tokens at $4/Mtok reserve $0.04, past the $0.01 budget; 100 reserve $0.0004
    with pytest.raises(openai.RateLimitError) as info:
        api.responses.create(model="mock-chat", input="hi", max_output_tokens=10_000)
    assert info.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert api.responses.create(model="mock-chat", input="hi", max_output_tokens=100).status == "completed"


def test_a_deterministic_request_is_cached_and_a_hit_continues(api: openai.OpenAI) -> None:
    ask = {"model": "cached", "input": "hi", "temperature": 0, "max_output_tokens": 50}
    first = api.responses.with_raw_response.create(**ask)  # type: ignore[call-overload]
    second = api.responses.with_raw_response.create(**ask)  # type: ignore[call-overload]
    assert first.headers["x-gateway-cache"] == "miss" and second.headers["x-gateway-cache"] == "hit"
    assert second.headers["x-gateway-cost-usd"] == "0"
    one, two = first.parse(), second.parse()
    assert one.id != two.id and one.output_text == two.output_text == "Mock reply: hi"
    third = api.responses.create(
        model="cached", input="more", previous_response_id=two.id, max_output_tokens=50
    )
    assert third.status == "completed" and third.output_text == "Mock reply: more"
