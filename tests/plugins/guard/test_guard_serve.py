"""``python -m plugins.guard serve`` as real processes on loopback, sharing mask mappings through Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from guard_helpers import (
    DELEGATION,
    ROOT,
    TOKEN,
    FakeGateway,
    GuardProcess,
    call_body,
    completion,
    fake_gateway_fixture,  # noqa: F401  (fixtures)
    free_port,
)
from redis_server import RedisServer

pytestmark = pytest.mark.slow  # real sidecar processes (and a redis-server)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def two_guards(
    redis_url: str, fake_gateway: tuple[FakeGateway, str]
) -> Iterator[tuple[GuardProcess, GuardProcess]]:
    env = {"PLUGIN_TOKEN": TOKEN, "GATEWAY_URL": fake_gateway[1], "REDIS_URL": redis_url}
    guards = [GuardProcess(env), GuardProcess(env)]
    try:
        yield guards[0].wait_ready(), guards[1].wait_ready()
    finally:
        for g in guards:
            g.stop()


def hook(guard: GuardProcess, body: dict[str, object], token: str = TOKEN) -> httpx.Response:
    return httpx.post(
        f"{guard.url}/hooks/{body['hook']}",
        json=body,
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_a_served_guard_refuses_calls_without_its_token(
    two_guards: tuple[GuardProcess, GuardProcess],
) -> None:
    guard = two_guards[0]
    body = call_body("pre", [{"role": "user", "content": "hi"}])
    assert hook(guard, body, token="wrong").status_code == 401
    assert httpx.post(f"{guard.url}/hooks/pre", json=body, timeout=10).status_code == 401
    assert hook(guard, body).json()["action"] == "continue"


def test_mask_on_one_replica_is_restored_by_another_through_redis(
    two_guards: tuple[GuardProcess, GuardProcess],
) -> None:
    a, b = two_guards
    email, card = "jane.roe@example.com", "5500 0000 0000 0004"
    pre = hook(
        a, call_body("pre", [{"role": "user", "content": f"{email} / {card}"}], config={"pii": "mask"})
    )
    sent = pre.json()["request"]["messages"][0]["content"]
    assert sent == "[EMAIL_1] / [CARD_1]"
    post = hook(
        b,
        call_body(
            "post", [], config={"pii": "mask"}, response=completion("Done for [EMAIL_1], card [CARD_1].")
        ),
    )
    assert post.json()["response"]["choices"][0]["message"]["content"] == f"Done for {email}, card {card}."
    # Taken once: a second post for the same request finds nothing to restore.
    again = hook(a, call_body("post", [], config={"pii": "mask"}, response=completion("[EMAIL_1]")))
    assert again.json() == {"action": "continue"}


def test_a_served_guard_repairs_through_the_gateway_url(
    two_guards: tuple[GuardProcess, GuardProcess], fake_gateway: tuple[FakeGateway, str]
) -> None:
    fake, _ = fake_gateway
    fake.answers.append((200, completion('{"ok": true}')))
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    body = call_body(
        "post",
        [{"role": "user", "content": "ok?"}],
        response=completion('{"ok": "yes"}'),
        response_format={"type": "json_schema", "json_schema": {"name": "ok", "schema": schema}},
    )
    answer = hook(two_guards[1], body).json()
    assert answer["response"]["choices"][0]["message"]["content"] == '{"ok": true}'
    assert answer["annotations"] == {"output": "repaired"}
    assert fake.calls[0][0] == f"Bearer {DELEGATION}"


def test_serve_refuses_a_public_address_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PLUGIN_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "plugins.guard", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert b"PLUGIN_TOKEN is not set" in proc.stderr
