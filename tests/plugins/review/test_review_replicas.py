"""Two review sidecar processes on one redis-server, each behind its own gateway replica: the queue is
shared (a decision made on one replica releases a request waiting on the other), two reviewers deciding
at once through different replicas get exactly one winner, and a replica dying while a request waits
leaves the item decidable on the other while the client gets 503 ``plugin_unavailable``."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import LiveServer, free_port
from redis_server import RedisServer
from review_helpers import (
    ANSWER,
    BUDGETS,
    KEYS,
    ReviewProcess,
    Upstream,
    bearer,
    decide,
    pending_items,
    routes,
)

from gateway.app import create_app
from gateway.delegation import SECRET_ENV
from gateway.settings import Settings

pytestmark = pytest.mark.slow  # redis-server, two sidecar processes, two gateways


class Replica:
    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.review = ReviewProcess({"REDIS_URL": redis_url}, port=free_port()).wait_ready()
        tmp.mkdir()
        (tmp / "routes.yaml").write_text(routes(self.review.url))
        (tmp / "budgets.yaml").write_text(BUDGETS)
        settings = Settings(routes_path=str(tmp / "routes.yaml"), budgets_path=str(tmp / "budgets.yaml"))
        self.server = LiveServer(create_app(settings, transport=Upstream().transport)).start()
        self.url = self.server.url

    def client(self, task: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=KEYS["acme-app"],
            max_retries=0,
            default_headers={"x-gateway-task": task},
        )

    def ask(self, task: str) -> Any:
        return self.client(task).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "refund?"}]
        )

    def stop(self) -> None:
        self.server.stop()
        self.review.stop()


@pytest.fixture
def replicas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Replica, Replica]]:
    monkeypatch.setenv(SECRET_ENV, "s" * 40)
    redis = RedisServer().start()
    a, b = Replica(tmp_path / "a", redis.url), Replica(tmp_path / "b", redis.url)
    yield a, b
    a.stop()
    b.stop()
    redis.stop()


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        yield executor


def test_a_decision_on_one_replica_releases_a_request_waiting_on_the_other(
    replicas: tuple[Replica, Replica], pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    a, b = replicas
    waiting = pool.submit(a.ask, "sync")
    (item,) = pending_items(b.url)  # the item is in the shared queue
    assert pending_items(a.url)[0]["id"] == item["id"]
    assert decide(b.url, "acme-rev", item["id"], action="edit", content="Edited on B.").status_code == 200
    assert waiting.result(timeout=15).choices[0].message.content == "Edited on B."


def test_reviewers_deciding_at_once_on_two_replicas_exactly_one_wins(
    replicas: tuple[Replica, Replica], pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    a, b = replicas
    for _ in range(3):
        with pytest.raises(openai.ConflictError) as held:
            a.ask("async")
        review_id = held.value.response.headers["x-gateway-review-id"]
        calls = [
            pool.submit(decide, r.url, key, review_id, action="reject", reason=f"by {key} on {n}")
            for n, r in enumerate((a, b, a, b))
            for key in ("acme-rev", "acme-rev2")
        ]
        answers = [c.result(timeout=15) for c in calls]
        assert sorted(r.status_code for r in answers) == [200] + [409] * 7
        (winner,) = [r for r in answers if r.status_code == 200]
        reason = winner.json()["decision"]["reason"]
        for loser in (r for r in answers if r.status_code == 409):
            assert loser.json()["error"]["item"]["decision"]["reason"] == reason  # all name the one winner
        poll = httpx.get(f"{b.url}/v1/plugins/review/reviews/{review_id}", headers=bearer("acme-app"))
        assert poll.status_code == 422 and reason in poll.json()["error"]["message"]
        assert poll.headers["x-gateway-review-id"] == review_id


def test_a_replica_dying_while_a_request_waits(
    replicas: tuple[Replica, Replica], pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    a, b = replicas
    waiting = pool.submit(a.ask, "sync")
    (item,) = pending_items(b.url)
    a.review.kill()
    with pytest.raises(openai.InternalServerError) as failed:
        waiting.result(timeout=15)
    assert failed.value.status_code == 503 and failed.value.code == "plugin_unavailable"
    assert "review" in failed.value.message
    # the item is still there and decidable on the other replica
    assert [i["id"] for i in pending_items(b.url)] == [item["id"]]
    assert decide(b.url, "acme-rev", item["id"], action="approve").status_code == 200
    assert httpx.get(b.url + "/v1/plugins/review/queue", headers=bearer("acme-rev")).json()["items"] == []
    # and the surviving replica keeps holding new requests
    waiting = pool.submit(b.ask, "sync")
    (item,) = pending_items(b.url)
    assert decide(b.url, "acme-rev", item["id"], action="approve").status_code == 200
    assert waiting.result(timeout=15).choices[0].message.content == ANSWER
