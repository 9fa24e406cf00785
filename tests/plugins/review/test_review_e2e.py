"""The review sidecar end to end, without a browser: the live gateway, `python -m plugins.review serve`,
a fake upstream, the openai SDK as the client. Holds (sync, async, timeouts), the decisions and what the
client gets, roles and tenants, the audit table, the metrics, logprobs."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import Gateway, GatewayFactory, free_port
from review_helpers import (
    ANSWER,
    BUDGETS,
    KEYS,
    TOKEN,
    ReviewProcess,
    Upstream,
    bearer,
    decide,
    pending_items,
    queue,
    routes,
)
from sqlalchemy import create_engine, select

from gateway.delegation import SECRET_ENV
from gateway.ledger.schema import audit

pytestmark = pytest.mark.slow  # a sidecar process beside the live gateway


@pytest.fixture(scope="module")
def review() -> Iterator[ReviewProcess]:
    side = ReviewProcess(port=free_port()).wait_ready()
    yield side
    side.stop()


@pytest.fixture
def live(
    gateway_factory: GatewayFactory, review: ReviewProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[Gateway, Upstream, str]]:
    monkeypatch.setenv(SECRET_ENV, "s" * 40)
    upstream = Upstream()
    ledger = f"sqlite:///{tmp_path}/ledger.sqlite3"
    gw = gateway_factory(routes(review.url), BUDGETS, transport=upstream.transport, ledger_url=ledger)
    yield gw, upstream, ledger
    for item in queue(gw.url, "acme-rev").json()["items"]:  # the sidecar outlives the test: empty its queue
        decide(gw.url, "acme-rev", item["id"], action="reject", reason="test over")


def client(gw: Gateway, task: str, key_id: str = "acme-app") -> openai.OpenAI:
    headers = {"x-gateway-task": task}
    return openai.OpenAI(base_url=gw.base_url, api_key=KEYS[key_id], max_retries=0, default_headers=headers)


def ask(gw: Gateway, task: str, *, stream: bool = False, key_id: str = "acme-app") -> Any:
    messages: Any = [{"role": "user", "content": "May I have my refund?"}]
    c = client(gw, task, key_id)
    if not stream:
        return c.chat.completions.create(model="gpt-4o-mini", messages=messages)
    chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(4) as executor:
        yield executor


def audit_rows(gw: Gateway, url: str) -> list[Any]:
    gw.app.state.gateway.ledger.flush(timeout_s=5)
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = list(conn.execute(select(audit).where(audit.c.kind == "review")))
    engine.dispose()
    return rows


def test_sync_hold_approve_and_the_decision_is_audited(
    live: tuple[Gateway, Upstream, str], pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    gw, _, ledger = live
    waiting = pool.submit(ask, gw, "sync")
    (item,) = pending_items(gw.url)
    assert (item["kind"], item["route"], item["hold"], item["preview"]) == ("answer", "sync", "sync", ANSWER)
    whole = httpx.get(f"{gw.url}/v1/plugins/review/queue/{item['id']}", headers=bearer("acme-rev")).json()
    assert whole["request"]["messages"][0]["content"] == "May I have my refund?"
    assert whole["response"]["choices"][0]["message"]["content"] == ANSWER
    # 12 prompt tokens at 0.15/Mtok + 3 completion tokens at 0.60/Mtok
    assert (whole["model"], whole["cost_usd"]) == ("gpt-4o-mini", "0.0000036")
    assert not waiting.done()
    done = decide(gw.url, "acme-rev", item["id"], action="approve")
    assert done.status_code == 200, done.text
    assert "x-gateway-audit" not in done.headers  # the gateway's, never the client's
    answer = waiting.result(timeout=15)
    assert answer.choices[0].message.content == ANSWER
    assert answer.model_extra["x_gateway"]["plugins"]["review"] == {
        "review_id": item["id"],
        "review": "approved",
    }
    (row,) = audit_rows(gw, ledger)
    target = json.loads(row.target)
    assert (row.action, row.who, row.role, row.tenant, row.status) == (
        "approve",
        "acme/acme-rev",
        "reviewer",
        "acme",
        200,
    )
    assert target["review_id"] == item["id"] and target["before"]["text"] == ANSWER and "after" not in target


def test_an_edited_answer_reaches_a_streaming_client_and_the_audit_has_before_and_after(
    live: tuple[Gateway, Upstream, str], pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    gw, _, ledger = live
    waiting = pool.submit(ask, gw, "sync", stream=True)
    (item,) = pending_items(gw.url)
    assert item["preview"] == ANSWER  # the stream was assembled for the reviewer
    edited = "Your refund of 100 EUR is approved; 20 EUR was a shipping fee."
    assert decide(gw.url, "acme-rev", item["id"], action="edit", content=edited).status_code == 200
    assert waiting.result(timeout=15) == edited
    (row,) = audit_rows(gw, ledger)
    target = json.loads(row.target)
    assert row.action == "edit" and target["before"]["text"] == ANSWER and target["after"]["text"] == edited


def test_reject_gives_the_client_422_review_rejected_with_the_reason(
    live: tuple[Gateway, Upstream, str], pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    gw, _, ledger = live
    waiting = pool.submit(ask, gw, "sync")
    (item,) = pending_items(gw.url)
    assert decide(gw.url, "acme-rev", item["id"], action="reject").status_code == 400  # a reason is required
    assert (
        decide(gw.url, "acme-rev", item["id"], action="reject", reason="amount not verified").status_code
        == 200
    )
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        waiting.result(timeout=15)
    err = refused.value
    assert err.code == "review_rejected" and "amount not verified" in err.message
    assert err.response.headers["x-should-retry"] == "false"
    assert err.response.headers["x-gateway-review-id"] == item["id"]
    (row,) = audit_rows(gw, ledger)
    assert row.action == "reject" and json.loads(row.target)["reason"] == "amount not verified"


@pytest.mark.parametrize(("task", "released"), [("t-reject", False), ("t-release", True)])
def test_sync_timeout_rejects_or_releases(
    live: tuple[Gateway, Upstream, str], task: str, released: bool
) -> None:
    gw, _, _ = live
    if released:
        assert ask(gw, task).choices[0].message.content == ANSWER
    else:
        with pytest.raises(openai.InternalServerError) as refused:
            ask(gw, task)
        assert refused.value.status_code == 504 and refused.value.code == "review_timeout"
        assert refused.value.response.headers["x-should-retry"] == "false"
    assert queue(gw.url, "acme-rev").json()["items"] == []  # decided by the timeout, not left waiting


def test_async_hold_409_then_202_then_the_answer(live: tuple[Gateway, Upstream, str]) -> None:
    gw, _, _ = live
    with pytest.raises(openai.ConflictError) as held:
        ask(gw, "async")
    err = held.value
    review_id = err.response.headers["x-gateway-review-id"]
    assert err.code == "review_pending" and err.body["review_id"] == review_id  # type: ignore[index]
    assert err.response.headers["x-should-retry"] == "false"
    poll = f"{gw.url}/v1/plugins/review/reviews/{review_id}"
    pending = httpx.get(poll, headers=bearer("acme-app"))
    assert pending.status_code == 202 and pending.json()["status"] == "pending"
    # another key of the tenant cannot read it, nor can a user key open the queue
    assert httpx.get(poll, headers=bearer("acme-app2")).status_code == 404
    assert queue(gw.url, "acme-app").status_code == 403
    assert decide(gw.url, "acme-app", review_id, action="approve").status_code == 403
    assert (
        decide(gw.url, "acme-rev", review_id, action="edit", content="Approved: 120 EUR.").status_code == 200
    )
    answer = httpx.get(poll, headers=bearer("acme-app"))
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "Approved: 120 EUR."
    assert answer.json()["object"] == "chat.completion"


def test_a_tenant_never_sees_another_tenants_items(
    live: tuple[Gateway, Upstream, str], pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    gw, _, _ = live
    with pytest.raises(openai.ConflictError) as held:
        ask(gw, "async")
    review_id = held.value.response.headers["x-gateway-review-id"]
    assert queue(gw.url, "globex-rev").json()["items"] == []
    item_url = f"{gw.url}/v1/plugins/review/queue/{review_id}"
    assert httpx.get(item_url, headers=bearer("globex-rev")).status_code == 404
    assert decide(gw.url, "globex-rev", review_id, action="approve").status_code == 404
    poll = f"{gw.url}/v1/plugins/review/reviews/{review_id}"
    assert httpx.get(poll, headers=bearer("globex-rev")).status_code == 404
    # a forged tenant header is dropped by the gateway
    forged = {**bearer("globex-rev"), "x-gateway-tenant": "acme"}
    assert httpx.get(gw.url + "/v1/plugins/review/queue", headers=forged).json()["items"] == []
    assert [i["id"] for i in queue(gw.url, "acme-rev").json()["items"]] == [review_id]


def test_two_reviewers_deciding_at_once_exactly_one_wins(
    live: tuple[Gateway, Upstream, str], pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    gw, _, ledger = live
    with pytest.raises(openai.ConflictError) as held:
        ask(gw, "async")
    review_id = held.value.response.headers["x-gateway-review-id"]
    calls = [
        pool.submit(decide, gw.url, "acme-rev", review_id, action="approve"),
        pool.submit(decide, gw.url, "acme-rev2", review_id, action="reject", reason="no"),
    ]
    answers = sorted(c.result(timeout=15).status_code for c in calls)
    assert answers == [200, 409]
    loser = next(c.result() for c in calls if c.result().status_code == 409)
    assert loser.json()["error"]["code"] == "review_conflict"
    assert len(audit_rows(gw, ledger)) == 1  # only the winning decision is audited


def test_the_page_loads_without_a_key_but_nothing_else_does(live: tuple[Gateway, Upstream, str]) -> None:
    gw, _, _ = live
    base = gw.url + "/v1/plugins/review/"
    page = httpx.get(base + "ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="app.js"' in page.text and "http" not in page.text.split("<body>")[1]
    for asset in ("app.js", "style.css"):
        assert httpx.get(base + "ui/" + asset).status_code == 200
    assert httpx.get(base + "ui", follow_redirects=True).status_code == 200
    for path in ("queue", "ui/../queue", "ui/%2e%2e/queue", "ui/.%2e/queue", "reviews/x"):
        assert httpx.get(base + path).status_code == 401, path
    assert httpx.post(base + "ui/", content=b"").status_code == 401


def test_the_sidecar_refuses_data_calls_that_did_not_come_through_the_gateway(review: ReviewProcess) -> None:
    token = {"authorization": f"Bearer {TOKEN}"}
    assert httpx.get(review.url + "/api/queue").status_code == 401  # no plugin token
    refused = httpx.get(review.url + "/api/queue", headers=token)  # the token, but no caller
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    user = {**token, "x-gateway-tenant": "acme", "x-gateway-key-id": "acme-app", "x-gateway-role": "user"}
    assert httpx.get(review.url + "/api/queue", headers=user).status_code == 403


def test_metrics_count_depth_outcomes_and_time_to_decision(
    live: tuple[Gateway, Upstream, str], review: ReviewProcess
) -> None:
    gw, _, _ = live
    with pytest.raises(openai.ConflictError) as held:
        ask(gw, "async")
    review_id = held.value.response.headers["x-gateway-review-id"]
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert httpx.get(review.url + "/metrics").status_code == 401
    text = httpx.get(review.url + "/metrics", headers=auth).text
    assert 'gateway_review_queue_depth{tenant="acme"} 1.0' in text
    decide(gw.url, "acme-rev", review_id, action="approve")
    text = httpx.get(review.url + "/metrics", headers=auth).text
    assert 'gateway_review_queue_depth{tenant="acme"} 0.0' in text
    assert 'gateway_review_outcomes_total{kind="answer",outcome="approved",route="async"}' in text
    assert 'gateway_review_time_to_decision_seconds_count{kind="answer"}' in text


def test_confidence_below_asks_for_logprobs_and_strips_them(live: tuple[Gateway, Upstream, str]) -> None:
    gw, upstream, _ = live
    upstream.logprob = -0.01  # sure of itself: not held
    answer = ask(gw, "unsure")
    assert upstream.bodies[-1]["logprobs"] is True  # asked for, though the client did not
    assert answer.choices[0].logprobs is None  # and taken out again
    upstream.logprob = -2.0  # p ≈ 0.14 < 0.5: held
    with pytest.raises(openai.ConflictError) as held:
        ask(gw, "unsure")
    review_id = held.value.response.headers["x-gateway-review-id"]
    item = httpx.get(f"{gw.url}/v1/plugins/review/queue/{review_id}", headers=bearer("acme-rev")).json()
    assert item["reasons"] == ["confidence 0.14 < 0.5"] and item["confidence"] == pytest.approx(
        0.1353, abs=1e-3
    )
    assert item["response"]["choices"][0]["logprobs"] is None


def test_the_tool_hook_holds_a_call_until_approved_and_answers_once(
    live: tuple[Gateway, Upstream, str], review: ReviewProcess, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    gw, _, _ = live
    call = tool_hook_call("req-tool-1", "billing__refund")
    first = pool.submit(post_tool_hook, review.url, call)
    (item,) = pending_items(gw.url)
    assert item["kind"] == "tool" and item["preview"].startswith("billing__refund(")
    again = pool.submit(post_tool_hook, review.url, call)  # the same call asked twice: one item
    assert len(queue(gw.url, "acme-rev").json()["items"]) == 1
    assert decide(gw.url, "acme-rev", item["id"], action="approve").status_code == 200
    assert first.result(timeout=15) == again.result(timeout=15)
    assert first.result()["action"] == "continue"
    assert post_tool_hook(review.url, tool_hook_call("req-tool-2", "weather__now"))["action"] == "continue"


def tool_hook_call(request_id: str, name: str) -> dict[str, Any]:
    return {
        "protocol": 1,
        "hook": "tool",
        "request_id": request_id,
        "endpoint": "/v1/responses",
        "tenant": "acme",
        "key_id": "acme-app",
        "role": "user",
        "route": "tools",
        "config": {"tools": ["billing__*"], "hold_timeout_s": 30},
        "request": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "refund order 7"}]},
        "tool_call": {"id": "call_1", "name": name, "arguments": '{"order": 7, "amount": 120}'},
        "deadline": time.time() + 60,
    }


def post_tool_hook(url: str, call: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(
        url + "/hooks/tool", json=call, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result
