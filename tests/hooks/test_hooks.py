"""The hook stage end to end: a real sidecar process on loopback, the gateway live, the openai SDK.

Every action on every hook, on_error closed and open against a sidecar that times out, refuses, answers
500 or answers garbage, post hooks on streams (buffer and audit), annotations, order, and hot reload.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import BUDGETS, GatewayFactory, free_port
from hookenv import ADMIN_KEY, SECRET, Hooked, access_lines, routes_yaml
from plugin_sidecar import Sidecar
from upstreams import FakeOpenAI

from gateway.delegation import SECRET_ENV, verify

MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def sidecar() -> Iterator[Sidecar]:
    side = Sidecar(free_port()).start()
    yield side
    side.stop()


@pytest.fixture
def hooked(gateway_factory: GatewayFactory, sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch) -> Hooked:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    sidecar.reset()
    upstream = FakeOpenAI()
    gateway = gateway_factory(
        routes_yaml(sidecar, free_port()), BUDGETS, transport=upstream.transport, admin_key=ADMIN_KEY
    )
    return Hooked(gateway, sidecar, upstream)


def completion(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-plugin",
        "object": "chat.completion",
        "created": 1,
        "model": "plugin",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        **extra,
    }


def chat(h: Hooked, task: str, **kw: Any) -> Any:
    return h.client(task).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, **kw
    )


# -- pre ------------------------------------------------------------------------------------------------


def test_pre_continue_sends_the_protocol_payload_with_a_delegation_token(hooked: Hooked) -> None:
    raw = chat(hooked, "one", temperature=0)
    assert raw.parse().choices[0].message.content == "Hello there!"
    text = hooked.metrics()
    for hook in ("pre", "post"):
        assert f'gateway_plugin_actions_total{{action="continue",hook="{hook}",plugin="a"}} 1.0' in text
        assert f'gateway_plugin_duration_seconds_count{{hook="{hook}",plugin="a"}} 1.0' in text
    calls = hooked.side.calls()
    assert [(c["plugin"], c["hook"]) for c in calls] == [("a", "pre"), ("a", "post")]
    pre = calls[0]["body"]
    assert calls[0]["authorization"] == "Bearer tok-a"
    assert pre["protocol"] == 1 and pre["hook"] == "pre" and pre["endpoint"] == "/v1/chat/completions"
    assert (pre["tenant"], pre["key_id"], pre["role"], pre["route"]) == ("acme", "acme-1", "user", "one")
    assert pre["config"] == {"level": 3}  # the route's options, post_stream kept by the gateway
    assert pre["request"]["messages"] == MESSAGES and pre["request_id"] == raw.headers["x-request-id"]
    token = verify(SECRET.encode(), pre["delegation"]["token"], time.time())
    assert (token.tenant, token.key_id, token.parent_request_id) == ("acme", "acme-1", pre["request_id"])
    assert token.expires_at == pre["delegation"]["expires_at"] and token.expires_at >= pre["deadline"]
    assert pre["deadline"] > time.time() and "response" not in pre
    post = calls[1]["body"]
    assert post["response"]["choices"][0]["message"]["content"] == "Hello there!"


def test_pre_modify_replaces_the_request_the_upstream_sees(hooked: Hooked) -> None:
    changed = {"model": "something-else", "messages": [{"role": "user", "content": "rewritten"}], "seed": 7}
    hooked.side.set("a", "pre", answer={"action": "modify", "request": changed})
    chat(hooked, "one")
    sent = hooked.upstream.json()
    assert sent["messages"] == [{"role": "user", "content": "rewritten"}] and sent["seed"] == 7
    assert sent["model"] == "gpt-4o-mini"  # the model is the route's choice, not the hook's


def test_pre_reject_answers_with_its_status_code_and_message(hooked: Hooked) -> None:
    hooked.side.set(
        "a", "pre", answer={"action": "reject", "status": 403, "code": "pii_found", "message": "no"}
    )
    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(hooked, "one")
    assert caught.value.status_code == 403 and caught.value.code == "pii_found"
    assert caught.value.body is not None and caught.value.message.endswith("no")
    assert hooked.upstream.requests == []


def test_pre_respond_is_a_real_answer_without_a_model(
    hooked: Hooked, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    answer = completion(
        "from the plugin", usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    )
    hooked.side.set(
        "a", "pre", answer={"action": "respond", "response": answer, "annotations": {"why": "faq"}}
    )
    raw = chat(hooked, "one")
    body = raw.parse()
    assert body.choices[0].message.content == "from the plugin"
    assert raw.headers["x-gateway-cost-usd"] == "0" and hooked.upstream.requests == []
    assert raw.http_response.json()["x_gateway"]["plugins"] == {"a": {"why": "faq"}}
    # streamed, when the client asked for a stream
    stream = hooked.client("one").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from the plugin"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5
    lines = access_lines(caplog, 2)
    assert [(line["status"], line["cost_usd"], line["plugins"]) for line in lines] == [
        (200, "0", {"a": {"why": "faq"}})
    ] * 2
    assert (
        'gateway_requests_total{model="none",route="one",status="200",tenant="acme"} 2.0' in hooked.metrics()
    )


def test_pre_hooks_run_in_route_order_and_post_hooks_in_reverse(hooked: Hooked) -> None:
    hooked.side.set(
        "a", "pre", answer={"action": "modify", "request": {"messages": [{"role": "user", "content": "A"}]}}
    )
    chat(hooked, "two")
    calls = hooked.side.calls()
    assert [(c["plugin"], c["hook"]) for c in calls] == [
        ("a", "pre"),
        ("b", "pre"),
        ("b", "post"),
        ("a", "post"),
    ]
    assert calls[1]["body"]["request"]["messages"] == [{"role": "user", "content": "A"}]  # b sees a's change


# -- post -----------------------------------------------------------------------------------------------


def test_post_modify_replaces_the_answer_and_annotations_are_merged(
    hooked: Hooked, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    hooked.side.set(
        "b", "post", answer={"action": "modify", "response": completion("B"), "annotations": {"n": 1}}
    )
    hooked.side.set("a", "post", answer={"action": "continue", "annotations": {"seen": "B"}})
    raw = chat(hooked, "two")
    assert raw.parse().choices[0].message.content == "B"
    assert [c["body"]["response"]["choices"][0]["message"]["content"] for c in hooked.side.calls()[2:]] == [
        "Hello there!",
        "B",
    ]
    assert raw.http_response.json()["x_gateway"]["plugins"] == {"b": {"n": 1}, "a": {"seen": "B"}}
    assert float(raw.headers["x-gateway-cost-usd"]) > 0  # billed on the upstream's usage
    assert access_lines(caplog, 1)[0]["plugins"] == {"b": {"n": 1}, "a": {"seen": "B"}}


def test_post_reject_refuses_the_answer_and_the_upstream_call_is_still_billed(hooked: Hooked) -> None:
    hooked.side.set(
        "a", "post", answer={"action": "reject", "status": 422, "code": "bad_answer", "message": "m"}
    )
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        chat(hooked, "one")
    assert caught.value.code == "bad_answer" and len(hooked.upstream.requests) == 1
    deadline = time.monotonic() + 5
    while 'gateway_cost_usd_total{model="gpt-4o-mini",tenant="acme"}' not in hooked.metrics():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (
        'gateway_requests_total{model="gpt-4o-mini",route="one",status="422",tenant="acme"} 1.0'
        in hooked.metrics()
    )


def test_respond_is_refused_from_a_post_hook_as_a_broken_contract(hooked: Hooked) -> None:
    hooked.side.set("a", "post", answer={"action": "respond", "response": completion("x")})
    with pytest.raises(openai.InternalServerError) as caught:
        chat(hooked, "one")
    assert caught.value.status_code == 503 and caught.value.code == "plugin_unavailable"
    assert caught.value.body is not None and caught.value.body["param"] == "a"  # type: ignore[index]


# -- failures -------------------------------------------------------------------------------------------

FAILURES = {
    "timeout": {"delay_s": 2.0},
    "status": {"status": 500},
    "invalid": {"raw": "<html>not json</html>"},
}


@pytest.mark.parametrize("reason", [*FAILURES, "connect"])
def test_on_error_closed_is_503_and_open_skips_the_plugin(hooked: Hooked, reason: str) -> None:
    if reason == "connect":
        shut, ajar = "deadshut", "deadajar"
    else:
        shut, ajar = "shut", "ajar"
        hooked.side.set("shut", "pre", **FAILURES[reason])
        hooked.side.set("ajar", "pre", **FAILURES[reason])
    with pytest.raises(openai.InternalServerError) as caught:
        chat(hooked, shut)
    assert caught.value.status_code == 503 and caught.value.code == "plugin_unavailable"
    assert caught.value.body["param"] == shut  # type: ignore[index]
    assert hooked.upstream.requests == []
    raw = chat(hooked, ajar)
    assert raw.parse().choices[0].message.content == "Hello there!"
    text = hooked.metrics()
    for name in (shut, ajar):
        assert f'gateway_plugin_errors_total{{hook="pre",plugin="{name}",reason="{reason}"}} 1.0' in text


# -- streams --------------------------------------------------------------------------------------------


def stream_text(h: Hooked, task: str, usage: bool = True) -> tuple[str, Any]:
    chunks = list(
        h.client(task).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": usage}
        )
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage


def test_stream_with_post_buffer_sends_the_modified_answer_with_usage(hooked: Hooked) -> None:
    hooked.side.set("a", "post", answer={"action": "modify", "response": completion("held and changed")})
    text, usage = stream_text(hooked, "one")
    assert text == "held and changed" and usage is not None and usage.completion_tokens > 0
    post = hooked.side.calls()[1]["body"]
    assert post["response"]["choices"][0]["message"]["content"] == "Hello there!"  # assembled from chunks


def test_stream_with_post_buffer_unchanged_and_rejected(hooked: Hooked) -> None:
    assert stream_text(hooked, "one")[0] == "Hello there!"
    hooked.side.set("a", "post", answer={"action": "reject", "status": 400, "code": "nope", "message": "m"})
    with pytest.raises(openai.BadRequestError) as caught:
        stream_text(hooked, "one")
    assert caught.value.code == "nope"  # a status, before any byte of the stream


def test_stream_with_post_audit_is_not_changed_and_the_hook_sees_it_after(hooked: Hooked) -> None:
    hooked.side.set("a", "post", answer={"action": "modify", "response": completion("ignored")})
    text, usage = stream_text(hooked, "audit")
    assert text == "Hello there!" and usage is not None
    deadline = time.monotonic() + 5
    while len(hooked.side.calls()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    post = hooked.side.calls()[1]["body"]
    assert post["hook"] == "post" and post["response"]["choices"][0]["message"]["content"] == "Hello there!"


def test_stream_without_post_hooks_streams_as_before(hooked: Hooked) -> None:
    assert stream_text(hooked, "plain")[0] == "Hello there!"
    assert hooked.side.calls() == []


# -- reload and the plugin-free path --------------------------------------------------------------------


def test_hot_reload_adds_and_removes_a_routes_plugins(hooked: Hooked) -> None:
    chat(hooked, "plain")
    assert hooked.side.calls() == []
    path = hooked.gateway.routes_path
    original = path.read_text()
    path.write_text(
        original.replace(
            "{name: plain, match: {task: plain}, targets: [{model: gpt-4o-mini}]}",
            "{name: plain, match: {task: plain}, targets: [{model: gpt-4o-mini}], plugins: [b]}",
        )
    )
    reloaded = httpx.post(
        hooked.gateway.url + "/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert reloaded.status_code == 200, reloaded.text
    chat(hooked, "plain")
    assert [(c["plugin"], c["hook"]) for c in hooked.side.calls()] == [("b", "pre"), ("b", "post")]
    explained = httpx.post(
        hooked.gateway.url + "/admin/explain",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        json={"body": {"model": "gpt-4o-mini"}, "headers": {"x-gateway-task": "plain"}},
    ).json()
    assert explained["plugins"] == [
        {
            "name": "b",
            "hooks": ["pre", "post"],
            "on_error": "closed",
            "timeout_s": 0.5,
            "post_stream": "buffer",
            "options": {},
        }
    ]


def test_a_route_without_plugins_compiles_to_no_hook_stage(hooked: Hooked) -> None:
    runtime = hooked.gateway.app.state.gateway.runtime  # type: ignore[attr-defined]
    assert runtime.router.plan("gpt-4o-mini", "plain", None).hooks is None
    assert runtime.router.plan("gpt-4o-mini", "one", None).hooks is not None


def test_a_modified_request_the_endpoint_refuses_is_the_plugins_fault_not_the_clients(hooked: Hooked) -> None:
    bad = {"action": "modify", "request": {"messages": MESSAGES, "temperature": "hot"}}
    hooked.side.set("shut", "pre", answer=bad)
    hooked.side.set("ajar", "pre", answer=bad)
    with pytest.raises(openai.InternalServerError) as caught:
        chat(hooked, "shut")
    assert caught.value.code == "plugin_unavailable" and caught.value.body["param"] == "shut"  # type: ignore[index]
    chat(hooked, "ajar")  # open: the request goes on as the client sent it
    assert "temperature" not in hooked.upstream.json() and hooked.upstream.json()["messages"] == MESSAGES
    assert 'gateway_plugin_errors_total{hook="pre",plugin="ajar",reason="invalid"} 1.0' in hooked.metrics()


def test_embeddings_on_a_route_with_plugins_skip_the_hooks(hooked: Hooked) -> None:
    done = hooked.client("one").embeddings.create(model="gpt-4o-mini", input="hi")
    assert len(done.data) == 1 and hooked.side.calls() == []


# -- cache ----------------------------------------------------------------------------------------------


def test_a_route_with_post_hooks_is_not_cached(hooked: Hooked) -> None:
    # A hit would skip the post hooks, whose work may belong to one request alone (guard's mask restores
    # that caller's values into the answer): two identical requests both reach the model and the hook.
    first, second = chat(hooked, "cached"), chat(hooked, "cached")
    assert first.headers["x-gateway-cache"] == second.headers["x-gateway-cache"] == "off"
    assert len(hooked.upstream.requests) == 2
    assert [c["hook"] for c in hooked.side.calls()] == ["pre", "post", "pre", "post"]


def test_a_route_with_only_pre_hooks_is_cached_on_the_request_they_left(hooked: Hooked) -> None:
    first, second = chat(hooked, "cachedpre"), chat(hooked, "cachedpre")
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    assert len(hooked.upstream.requests) == 1
    assert [c["hook"] for c in hooked.side.calls()] == ["pre", "pre"]
