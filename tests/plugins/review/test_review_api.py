"""The review API in process (the sidecar's app over ASGI, the in-memory queue): abandoned sync items leave
the queue, the audit description keeps long texts bounded and verifiable, bad decisions are 400s."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from plugins.review.app import build
from plugins.review.hooks import Review
from plugins.sdk import PluginSettings

TOKEN = "t"
REVIEWER = {
    "authorization": f"Bearer {TOKEN}",
    "x-gateway-tenant": "acme",
    "x-gateway-key-id": "acme-rev",
    "x-gateway-role": "reviewer",
}


@pytest.fixture
async def api() -> AsyncIterator[tuple[httpx.AsyncClient, Review]]:
    app, review = build(PluginSettings(token=TOKEN, gateway_url=None, data_dir=None, redis_url=None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://review") as client:
        yield client, review


def item(item_id: str, *, hold: str = "async", deadline: float | None = None) -> dict[str, Any]:
    now = time.time()
    return {
        "id": item_id,
        "kind": "answer",
        "tenant": "acme",
        "key_id": "acme-app",
        "request_id": "req-" + item_id,
        "route": "r",
        "model": "m",
        "hold": hold,
        "reasons": ["sampled"],
        "created": now - 100,
        "deadline": deadline if deadline is not None else now + 60,
        "request": {"messages": [{"role": "user", "content": "q"}]},
        "response": {"choices": [{"index": 0, "message": {"role": "assistant", "content": "answer"}}]},
        "annotations": {},
    }


async def test_a_sync_item_long_past_its_deadline_leaves_the_queue(
    api: tuple[httpx.AsyncClient, Review],
) -> None:
    client, review = api
    await review.queue.put(item("gone", hold="sync", deadline=time.time() - 31), 60)
    await review.queue.put(
        item("late", hold="sync", deadline=time.time() - 1), 60
    )  # its waiter may still come
    listed = (await client.get("/api/queue", headers=REVIEWER)).json()["items"]
    assert [i["id"] for i in listed] == ["late"]
    gone = await review.queue.get("acme", "gone")
    assert gone is not None and gone.status == "timed_out" and gone.decision["outcome"] == "abandoned"  # type: ignore[index]


async def test_the_audit_description_is_bounded_and_verifiable(api: tuple[httpx.AsyncClient, Review]) -> None:
    client, review = api
    await review.queue.put(item("long"), 60)
    edited = "é" * 5000
    done = await client.post(
        "/api/queue/long/decision", json={"action": "edit", "content": edited}, headers=REVIEWER
    )
    assert done.status_code == 200
    header = done.headers["x-gateway-audit"]
    assert header.isascii() and len(header) < 60_000
    described = json.loads(header)
    assert described["before"] == {
        "text": "answer",
        "truncated": False,
        "sha256": hashlib.sha256(b"answer").hexdigest(),
    }
    after = described["after"]
    assert after["truncated"] and after["text"] == "é" * 4000
    assert after["sha256"] == hashlib.sha256(edited.encode()).hexdigest()


@pytest.mark.parametrize(
    "body",
    [
        {"action": "maybe"},
        {"action": "reject", "reason": "  "},
        {"action": "edit"},
        {"action": "edit", "content": 3},
    ],
)
async def test_a_bad_decision_is_a_400_and_decides_nothing(
    api: tuple[httpx.AsyncClient, Review], body: dict[str, Any]
) -> None:
    client, review = api
    await review.queue.put(item("x"), 60)
    answer = await client.post("/api/queue/x/decision", json=body, headers=REVIEWER)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_decision"
    record = await review.queue.get("acme", "x")
    assert record is not None and record.status == "pending"


async def test_unknown_ui_files_are_404(api: tuple[httpx.AsyncClient, Review]) -> None:
    client, _ = api
    token = {"authorization": f"Bearer {TOKEN}"}
    assert (await client.get("/api/ui/app.js", headers=token)).status_code == 200
    assert (await client.get("/api/ui/secrets.txt", headers=token)).status_code == 404
