"""JSON-schema output validation and the one delegated repair call, against a loopback fake gateway."""

from __future__ import annotations

import copy
import json
from typing import Any

from guard_helpers import (  # noqa: F401  (fixtures)
    DELEGATION,
    FakeGateway,
    GuardApp,
    call_body,
    completion,
    fake_gateway_fixture,
    guard_app_fixture,
)

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
MESSAGES = [{"role": "user", "content": "Extract: Ada, 36."}]


def post_body(content: str | None, config: dict[str, Any] | None = None, **message: Any) -> dict[str, Any]:
    return call_body(
        "post",
        MESSAGES,
        config=config or {},
        response=completion(content, **message),
        response_format=copy.deepcopy(FORMAT),
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
    )


async def test_a_valid_answer_passes(guard_app: GuardApp, fake_gateway: tuple[FakeGateway, str]) -> None:
    r = await guard_app.hook(post_body('{"name": "Ada", "age": 36}'))
    assert r.json() == {"action": "continue", "annotations": {"output": "valid"}}
    assert fake_gateway[0].calls == []


async def test_an_invalid_answer_is_repaired_by_one_delegated_call(
    guard_app: GuardApp, fake_gateway: tuple[FakeGateway, str]
) -> None:
    fake, _ = fake_gateway
    fake.answers.append((200, completion('{"name": "Ada", "age": 36}')))
    r = await guard_app.hook(post_body('{"name": "Ada", "age": "thirty-six"}'))
    answer = r.json()
    assert answer["action"] == "modify"
    assert answer["response"]["choices"][0]["message"]["content"] == '{"name": "Ada", "age": 36}'
    assert answer["response"]["id"] == "chatcmpl-1"  # the client's answer, with the repaired content
    assert answer["annotations"] == {"output": "repaired"}

    assert len(fake.calls) == 1
    bearer, body = fake.calls[0]
    assert bearer == f"Bearer {DELEGATION}"  # as the caller, never the plugin's own credentials
    assert body["model"] == "gpt-4o-mini" and body["response_format"] == FORMAT and body["temperature"] == 0
    assert "stream" not in body and "stream_options" not in body
    assert body["messages"][0] == MESSAGES[0]
    assert body["messages"][1] == {"role": "assistant", "content": '{"name": "Ada", "age": "thirty-six"}'}
    assert body["messages"][2]["role"] == "user"
    assert "/age" in body["messages"][2]["content"] and "integer" in body["messages"][2]["content"]


async def test_not_json_at_all_is_repaired_too(
    guard_app: GuardApp, fake_gateway: tuple[FakeGateway, str]
) -> None:
    fake, _ = fake_gateway
    fake.answers.append((200, completion('{"name": "Ada", "age": 36}')))
    r = await guard_app.hook(post_body("Sure! Ada is 36."))
    assert r.json()["annotations"] == {"output": "repaired"}
    assert "not JSON" in fake.calls[0][1]["messages"][2]["content"]


async def test_still_invalid_after_the_repair_is_a_502_invalid_output(
    guard_app: GuardApp, fake_gateway: tuple[FakeGateway, str]
) -> None:
    fake, _ = fake_gateway
    fake.answers.append((200, completion('{"name": "Ada"}')))
    r = await guard_app.hook(post_body('{"age": 36}'))
    answer = r.json()
    assert (answer["action"], answer["status"], answer["code"]) == ("reject", 502, "invalid_output")
    assert "'age' is a required property" in answer["message"]
    assert answer["annotations"] == {"output": "invalid"}
    assert len(fake.calls) == 1  # one repair, never a second


async def test_a_failed_repair_call_is_a_502_invalid_output(
    guard_app: GuardApp, fake_gateway: tuple[FakeGateway, str]
) -> None:
    fake, _ = fake_gateway
    over = {"error": {"message": "budget spent", "type": "insufficient_quota", "code": "budget_exceeded"}}
    fake.answers.append((429, over))
    r = await guard_app.hook(post_body("[]"))
    answer = r.json()
    assert (answer["status"], answer["code"]) == (502, "invalid_output")
    assert "429" in answer["message"] and "budget spent" in answer["message"]


async def test_validate_output_false_and_requests_without_a_schema_are_not_checked(
    guard_app: GuardApp,
) -> None:
    r = await guard_app.hook(post_body("not json", config={"validate_output": False}))
    assert r.json() == {"action": "continue"}
    body = call_body(
        "post", MESSAGES, response=completion("not json"), response_format={"type": "json_object"}
    )
    assert (await guard_app.hook(body)).json() == {"action": "continue"}


async def test_a_refusal_is_not_repaired(guard_app: GuardApp, fake_gateway: tuple[FakeGateway, str]) -> None:
    r = await guard_app.hook(post_body(None, refusal="I can't help with that."))
    assert r.json() == {"action": "continue", "annotations": {"output": "refusal"}}
    assert fake_gateway[0].calls == []


async def test_an_invalid_schema_is_noted_not_enforced(guard_app: GuardApp) -> None:
    body = post_body("whatever")
    body["request"]["response_format"]["json_schema"]["schema"] = {"type": "no-such-type"}
    assert (await guard_app.hook(body)).json() == {
        "action": "continue",
        "annotations": {"output": "schema_invalid"},
    }


async def test_the_repair_calls_own_post_hook_does_not_repair_again(
    guard_app: GuardApp, fake_gateway: tuple[FakeGateway, str]
) -> None:
    """The repair call runs through the same route, so the gateway calls the guard's post hook on its
    answer too, with the same delegation token: that hook leaves the checking to the one that asked."""
    fake, _ = fake_gateway
    fake.hook_app = guard_app.app  # the fake gateway runs the route's post hook on what it answers
    fake.answers.append((200, completion('{"still": "wrong"}')))
    r = await guard_app.hook(post_body('{"age": 36}'))
    assert (r.json()["status"], r.json()["code"]) == (502, "invalid_output")  # the asking hook decided
    assert fake.nested == [{"action": "continue", "annotations": {"output": "deferred"}}]
    assert len(fake.calls) == 1


async def test_mask_and_repair_the_repair_call_never_carries_the_originals(
    guard_app: GuardApp, fake_gateway: tuple[FakeGateway, str]
) -> None:
    fake, _ = fake_gateway
    schema = {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "to", "schema": schema}}
    ask = [{"role": "user", "content": "Who do I write to? It is jane.roe@example.com."}]
    pre = await guard_app.hook(call_body("pre", ask, config={"pii": "mask"}, response_format=fmt))
    masked = pre.json()["request"]
    assert "[EMAIL_1]" in masked["messages"][0]["content"]

    fake.answers.append((200, completion('{"to": "[EMAIL_1]"}')))
    post = call_body("post", [], config={"pii": "mask"}, response=completion('{"who": "[EMAIL_1]"}'))
    post["request"] = masked  # the post hook sees the request as the model got it
    answer = (await guard_app.hook(post)).json()
    assert answer["response"]["choices"][0]["message"]["content"] == '{"to": "jane.roe@example.com"}'
    assert answer["annotations"] == {"pii": "restored", "pii_restored": 1, "output": "repaired"}
    assert "jane.roe@example.com" not in json.dumps(fake.calls[0][1])
    assert fake.calls[0][1]["messages"][1] == {"role": "assistant", "content": '{"who": "[EMAIL_1]"}'}
