"""The protocol's answers checked strictly, the deadline cap on a hook call, and stream assembly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from conftest import free_port
from plugin_sidecar import Sidecar
from upstreams import sse, stream_chunks

from gateway.config.model import PluginConfig
from gateway.errors import PluginRejected
from gateway.metrics import Metrics
from gateway.plugins.answers import assemble, frames_of, keep_transport
from gateway.plugins.hooks import HookClient, HookFailed, Target, parse_answer
from gateway.transport import FastTransport


@pytest.mark.parametrize(
    ("hook", "answer", "problem"),
    [
        ("pre", b"[]", "not a JSON object"),
        ("pre", b"{", "not JSON"),
        ("pre", {"action": "maybe"}, "action 'maybe'"),
        ("post", {"action": "respond", "response": {}}, "action 'respond'"),
        ("pre", {"action": "continue", "annotations": {"nested": {"a": 1}}}, "flat"),
        ("pre", {"action": "reject", "status": 500, "message": "x"}, "4xx"),
        ("pre", {"action": "reject", "status": True, "message": "x"}, "4xx"),
        ("pre", {"action": "reject", "status": 403}, "message"),
        ("pre", {"action": "modify"}, "'request'"),
        ("pre", {"action": "modify", "request": {"messages": []}}, "messages"),
        ("pre", {"action": "respond", "response": {"choices": []}}, "choices"),
        ("post", {"action": "modify", "response": {"choices": [{"index": 0}]}}, "message"),
        ("tool", {"action": "modify", "tool_call": {"name": "f", "arguments": 3}}, "arguments"),
        ("tool", {"action": "modify", "tool_call": {"name": "f", "arguments": "{"}}, "not valid JSON"),
        ("tool", {"action": "modify", "tool_call": {"name": "f", "arguments": "[1]"}}, "a JSON object"),
        ("tool", {"action": "modify", "tool_call": {"arguments": "{}"}}, "'name'"),
        (
            "post",
            {"action": "reject", "status": 409, "message": "m", "review_id": "a b\r\nx: y"},
            "review_id",
        ),
        ("post", {"action": "reject", "status": 409, "message": "m", "review_id": 7}, "review_id"),
        ("post", {"action": "reject", "status": 409, "message": "m", "retry": "no"}, "retry"),
    ],
)
def test_answers_that_break_the_contract_are_invalid(hook: str, answer: object, problem: str) -> None:
    raw = answer if isinstance(answer, bytes) else orjson.dumps(answer)
    with pytest.raises(HookFailed, match=problem) as caught:
        parse_answer(hook, raw)
    assert caught.value.reason == "invalid"


def test_valid_answers() -> None:
    a = parse_answer(
        "pre", b'{"action": "reject", "status": 429, "code": "slow", "message": "m", "annotations": {"k": 1}}'
    )
    assert (a.action, a.status, a.code, a.message, a.annotations) == ("reject", 429, "slow", "m", {"k": 1})
    assert parse_answer("post", b'{"action": "continue"}').action == "continue"


def test_a_tool_calls_arguments_may_be_an_object_or_a_json_string_of_one() -> None:
    edited = {"action": "modify", "tool_call": {"name": "f", "arguments": {"b": [1, 2], "a": "é"}}}
    a = parse_answer("tool", orjson.dumps(edited))
    assert a.value == {"name": "f", "arguments": '{"a":"é","b":[1,2]}'}  # canonical: compact, sorted
    as_sent = '{"b": 1,  "a": 2}'  # a string is what the call runs with, as the reviewer wrote it
    edited = {"action": "modify", "tool_call": {"name": "f", "arguments": as_sent}}
    a = parse_answer("tool", orjson.dumps(edited))
    assert a.value == {"name": "f", "arguments": as_sent}


def test_a_reject_with_a_review_id_and_no_retry_reaches_the_client_error() -> None:
    a = parse_answer(
        "post",
        b'{"action": "reject", "status": 409, "code": "review_pending", "message": "held",'
        b' "review_id": "rev_1-x", "retry": false}',
    )
    assert (a.review_id, a.retry) == ("rev_1-x", False)
    err = PluginRejected(a.message, status=a.status, code=a.code, review_id=a.review_id, retry=a.retry)
    assert err.body()["error"] == {
        "message": "held",
        "type": "invalid_request_error",
        "param": None,
        "code": "review_pending",
        "review_id": "rev_1-x",
    }
    assert err.headers == {"x-gateway-review-id": "rev_1-x", "x-should-retry": "false"}
    plain = PluginRejected("no", status=403, code="denied")
    assert "review_id" not in plain.body()["error"] and plain.headers == {}


@pytest.fixture(scope="module")
def sidecar() -> Iterator[Sidecar]:
    side = Sidecar(free_port()).start()
    yield side
    side.stop()


async def test_a_hook_call_never_outlives_the_requests_deadline(sidecar: Sidecar) -> None:
    sidecar.reset()
    transport = FastTransport()
    metrics = Metrics()
    client = HookClient(transport, metrics)
    target = Target.build(
        PluginConfig("a", sidecar.plugin_url("a"), hooks=("pre",), timeout_s=30), {}, "buffer"
    )
    try:
        with pytest.raises(HookFailed) as caught:  # the request's deadline already passed
            await client.call(target, "pre", {"protocol": 1}, time.monotonic() - 0.001)
        assert caught.value.reason == "timeout" and sidecar.calls() == []
        answer = await client.call(target, "pre", {"protocol": 1}, time.monotonic() + 5)
        assert answer.action == "continue" and len(sidecar.calls()) == 1
    finally:
        await transport.aclose()
    text = metrics.render().decode()
    assert 'gateway_plugin_errors_total{hook="pre",plugin="a",reason="timeout"} 1.0' in text


def test_a_stream_assembles_into_the_answer_and_back() -> None:
    chunks = stream_chunks("m", ["Hel", "lo"], usage=True)
    frames = [sse(c) for c in chunks]
    answer = assemble(frames[:-1], frames[-1])
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"] == "Hello"
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["usage"]["completion_tokens"] > 0
    again = assemble(frames_of(answer))
    assert again["choices"] == answer["choices"]


def test_a_streams_logprobs_are_assembled_for_the_post_hooks() -> None:
    chunks = stream_chunks("m", ["Hel", "lo"], usage=False)
    for n, c in enumerate(chunks[1:3]):
        c["choices"][0]["logprobs"] = {"content": [{"token": "t", "logprob": -0.5 * n}]}
    answer = assemble([sse(c) for c in chunks])
    assert answer["choices"][0]["logprobs"]["content"] == [
        {"token": "t", "logprob": 0.0},
        {"token": "t", "logprob": -0.5},
    ]
    plain = assemble([sse(c) for c in stream_chunks("m", ["a"], usage=False)])
    assert "logprobs" not in plain["choices"][0]


def test_a_pre_hook_cannot_change_the_model_or_the_stream_switches() -> None:
    original = {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "messages": []}
    changed = keep_transport(original, {"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    assert changed == {**original, "messages": [{"role": "user", "content": "hi"}]}
    assert "stream" not in keep_transport({"model": "m"}, {"model": "m", "stream": True})


def test_a_plugins_x_gateway_rides_on_the_last_chunk_of_a_streamed_answer() -> None:
    answer = {
        "id": "a",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "See [d#0]."}}],
        "x_gateway": {"citations": [{"doc_id": "d", "chunk_id": "d#0"}]},
    }
    chunks = [orjson.loads(f[len(b"data: ") :]) for f in frames_of(answer)]
    assert chunks[-1]["x_gateway"] == answer["x_gateway"]
    assert all("x_gateway" not in c for c in chunks[:-1])
    assert "x_gateway" not in orjson.loads(frames_of({**answer, "x_gateway": None})[-1][6:])
