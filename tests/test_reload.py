"""Hot reload: a routes.yaml edit applies within 2 s, in-flight streams survive, bad files are refused."""

from __future__ import annotations

import threading
import time

import httpx
import openai
from conftest import KEY_ACME, ROUTES, GatewayFactory
from upstreams import FakeOpenAI


def wait_for(predicate, timeout: float = 2.0) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def reload_count(gw, result: str) -> float:  # type: ignore[no-untyped-def]
    for line in httpx.get(gw.url + "/metrics").text.splitlines():
        if (
            line.startswith("gateway_config_reload_total")
            and f'result="{result}"' in line
            and 'file="routes"' in line
        ):
            return float(line.split()[-1])
    return 0.0


def test_routes_edit_applies_without_restart_and_streams_survive(gateway_factory: GatewayFactory) -> None:
    upstream = FakeOpenAI()
    upstream.gate = threading.Event()
    gw = gateway_factory(transport=upstream.transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST",
        gw.base_url + "/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {KEY_ACME}"},
        timeout=10,
    ) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")
        # Send gpt-4o to the mock deployment instead, while the stream is open.
        gw.routes_path.write_text(
            ROUTES.replace("targets: [{model: gpt-4o-mini}]", "targets: [{model: mock-chat}]")
        )

        def routed_to_mock() -> bool:
            r = c.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}]
            )
            return r.headers["x-gateway-model"] == "mock-chat"

        took = wait_for(routed_to_mock, timeout=2.0)
        assert took < 2.0
        upstream.gate.set()
        rest = list(lines)
    assert rest[-1] == "data: [DONE]" or "data: [DONE]" in rest, (
        "the stream opened before the reload finished"
    )
    assert reload_count(gw, "success") >= 1


def test_invalid_file_is_refused_and_old_config_keeps_serving(gateway_factory: GatewayFactory) -> None:
    upstream = FakeOpenAI()
    gw = gateway_factory(transport=upstream.transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    gw.routes_path.write_text(ROUTES.replace("targets: [{model: gpt-4o-mini}]", "targets: [{model: gpt-5}]"))
    wait_for(lambda: reload_count(gw, "error") >= 1)
    r = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}]
    )
    assert r.headers["x-gateway-model"] == "gpt-4o-mini"
    gw.routes_path.write_text("routes: [unclosed")
    wait_for(lambda: reload_count(gw, "error") >= 2)
    assert c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}]).choices


def test_budgets_edit_adds_a_key_without_restart_and_keeps_spend(gateway_factory: GatewayFactory) -> None:
    from conftest import BUDGETS, sha

    tenant = "  acme:\n    budget: {usd: 5, period: daily}\n"
    budgets = BUDGETS.replace("  acme:\n", tenant)
    gw = gateway_factory(budgets=budgets, transport=FakeOpenAI().transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    cost = float(raw.headers["x-gateway-cost-usd"])
    new_key = "sk-test-new-key"
    gw.budgets_path.write_text(
        budgets.replace("    keys:\n", f'    keys:\n      - {{id: acme-2, sha256: "{sha(new_key)}"}}\n', 1)
    )
    fresh = openai.OpenAI(base_url=gw.base_url, api_key=new_key, max_retries=0)

    def new_key_works() -> bool:
        try:
            fresh.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        except openai.AuthenticationError:
            return False
        return True

    assert wait_for(new_key_works) < 2.0
    # Spend lives in the store, not in the config: the reload kept the first request's cost.
    state = gw.app.state.gateway  # type: ignore[attr-defined]
    import asyncio

    from gateway.config.model import Budget
    from gateway.pipeline.admit import period_start
    from gateway.store.base import ScopeLimits

    async def spent() -> int:
        scope = ScopeLimits(scope="t", period_start=period_start(Budget(5, "daily"), time.time()))
        return (await state.store.spend("acme", scope)).spent_nano

    assert asyncio.run(spent()) >= round(cost * 1e9)


def test_invalid_budgets_file_is_refused_and_keys_keep_working(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(transport=FakeOpenAI().transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    gw.budgets_path.write_text("tenants:\n  acme:\n    keys:\n      - {id: broken, sha256: nothex}\n")

    def refused() -> bool:
        for line in httpx.get(gw.url + "/metrics").text.splitlines():
            if (
                line.startswith("gateway_config_reload_total")
                and 'file="budgets"' in line
                and "error" in line
            ):
                return float(line.split()[-1]) >= 1
        return False

    wait_for(refused)
    assert c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]).choices
