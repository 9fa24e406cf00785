"""Hooks on /v1/messages (the hook sees the OpenAI form; its change is laid over the native body),
on /v1/completions, and the tool hook point, each against the real sidecar process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from conftest import BUDGETS, KEY_ACME, GatewayFactory, free_port
from hookenv import ADMIN_KEY, SECRET, Hooked, routes_yaml
from plugin_sidecar import Sidecar
from upstreams import FakeOpenAI

from gateway.app import create_app
from gateway.config.model import PluginConfig
from gateway.delegation import SECRET_ENV, Delegation, mint
from gateway.errors import PluginRejected, PluginUnavailable
from gateway.ingress.anthropic import to_openai_request
from gateway.ingress.anthropic_remap import remap
from gateway.metrics import Metrics
from gateway.plugins.hooks import HookClient, Target
from gateway.plugins.stage import Caller, HookStage, delegation_for, run_tool_hooks
from gateway.settings import Settings
from gateway.transport import FastTransport


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


def claude(h: Hooked) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=h.gateway.url, api_key=KEY_ACME, max_retries=0, default_headers={"x-gateway-task": "one"}
    )


NATIVE: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "max_tokens": 64,
    "temperature": 0.2,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "metadata": {"user_id": "u-42"},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "top_k": 5,
    "messages": [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "My card is 4111 1111 1111 1111"},
    ],
}


def test_remap_replaces_only_what_the_hook_changed_and_keeps_what_it_could_not_see() -> None:
    view = to_openai_request(NATIVE)
    assert "thinking" not in view and "cache_control" not in str(view)  # the hook cannot see them
    after = {**view, "messages": [*view["messages"][:-1], {"role": "user", "content": "My card is [CARD]"}]}
    out = remap(NATIVE, view, after)
    assert out["messages"][:2] == NATIVE["messages"][:2]  # untouched: native blocks, cache_control kept
    assert out["messages"][2]["content"] in (
        "My card is [CARD]",
        [{"type": "text", "text": "My card is [CARD]"}],
    )
    for kept in ("system", "metadata", "thinking", "top_k", "temperature", "max_tokens", "model"):
        assert out[kept] == NATIVE[kept], kept
    assert remap(NATIVE, view, dict(view)) is NATIVE
    changed = remap(NATIVE, view, {**view, "temperature": 0.9, "user": "u-7", "stop": "END"})
    assert (changed["temperature"], changed["metadata"], changed["stop_sequences"]) == (
        0.9,
        {"user_id": "u-7"},
        ["END"],
    )
    assert changed["thinking"] == NATIVE["thinking"] and changed["messages"] == NATIVE["messages"]


def test_messages_pre_hook_sees_openai_form_and_its_change_reaches_the_upstream(hooked: Hooked) -> None:
    def modified(request: dict[str, Any]) -> dict[str, Any]:
        messages = [*request["messages"][:-1], {"role": "user", "content": "My card is [CARD]"}]
        return {**request, "messages": messages}

    view = to_openai_request(NATIVE)
    hooked.side.set("a", "pre", answer={"action": "modify", "request": modified(view)})
    typed = ("model", "max_tokens", "system", "metadata", "messages")
    message = claude(hooked).messages.create(
        **{k: NATIVE[k] for k in typed}, extra_body={k: v for k, v in NATIVE.items() if k not in typed}
    )
    assert message.content[0].type == "text" and message.content[0].text == "Hello there!"
    seen = hooked.side.calls()[0]["body"]
    assert seen["endpoint"] == "/v1/messages" and seen["request"]["messages"] == view["messages"]
    sent = hooked.upstream.json()
    assert sent["messages"][-1] == {"role": "user", "content": "My card is [CARD]"}
    assert sent["messages"][:-1] == view["messages"][:-1]
    assert (sent["temperature"], sent["user"], sent["max_tokens"]) == (0.2, "u-42", 64)


def test_messages_reject_and_respond_use_anthropic_shapes(hooked: Hooked) -> None:
    hooked.side.set(
        "a", "pre", answer={"action": "reject", "status": 403, "code": "blocked", "message": "No."}
    )
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        claude(hooked).messages.create(
            model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body == {"type": "error", "error": {"type": "permission_error", "message": "No."}}
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "p",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "canned"}, "finish_reason": "stop"}
        ],
    }
    hooked.side.set("a", "pre", answer={"action": "respond", "response": answer})
    message = claude(hooked).messages.create(
        model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    )
    assert message.content[0].text == "canned" and message.stop_reason == "end_turn"  # type: ignore[union-attr]
    with claude(hooked).messages.stream(
        model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        assert stream.get_final_text() == "canned"
    assert hooked.upstream.requests == []


def test_completions_pre_modify_and_post_modify(hooked: Hooked) -> None:
    hooked.side.set(
        "a", "pre", answer={"action": "modify", "request": {"prompt": "rewritten", "max_tokens": 5}}
    )
    answer = {
        "id": "x",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": " changed", "finish_reason": "stop", "logprobs": None}],
    }
    hooked.side.set("a", "post", answer={"action": "modify", "response": answer})
    done = hooked.client("one").completions.create(model="gpt-4o-mini", prompt="hello")
    assert done.choices[0].text == " changed" and hooked.upstream.json()["prompt"] == "rewritten"
    assert hooked.side.calls()[1]["body"]["response"]["choices"][0]["text"] == " world"


# -- the tool hook point --------------------------------------------------------------------------------


async def test_run_tool_hooks_against_the_sidecar(sidecar: Sidecar) -> None:
    sidecar.reset()
    transport = FastTransport()
    stage = HookStage(HookClient(transport, Metrics()), SECRET.encode())
    plugin = PluginConfig("a", sidecar.plugin_url("a"), hooks=("pre", "tool"), on_error="closed", token="t")
    target = Target.build(plugin, {"policy": "strict"}, "buffer")
    deadline = time.monotonic() + 5
    delegation = delegation_for(SECRET.encode(), None, "acme", "acme-1", "req_1", deadline)
    caller = Caller("req_1", "/v1/responses", "acme", "acme-1", "user", "r", deadline, delegation)
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    request = {"messages": [{"role": "user", "content": "weather?"}]}
    try:
        assert await run_tool_hooks(stage, caller, (target,), request, call) == call
        body = sidecar.calls()[0]["body"]
        assert body["hook"] == "tool" and body["tool_call"] == call and body["config"] == {"policy": "strict"}
        changed = {"id": "ignored", "name": "get_weather", "arguments": '{"city": "Lyon"}'}
        sidecar.set(
            "a", "tool", answer={"action": "modify", "tool_call": changed, "annotations": {"r": "low"}}
        )
        assert await run_tool_hooks(stage, caller, (target,), request, call) == {**changed, "id": "call_1"}
        assert caller.annotations == {"a": {"r": "low"}}
        sidecar.set(
            "a", "tool", answer={"action": "reject", "status": 403, "code": "denied", "message": "no"}
        )
        refused = await run_tool_hooks(stage, caller, (target,), request, call)
        assert isinstance(refused, PluginRejected) and (refused.status, refused.code) == (403, "denied")
        sidecar.set("a", "tool", answer={"action": "modify", "tool_call": {"name": "x"}})  # no arguments
        with pytest.raises(PluginUnavailable):
            await run_tool_hooks(stage, caller, (target,), request, call)
    finally:
        await transport.aclose()


def test_a_request_made_with_a_delegation_token_hands_its_hooks_that_token() -> None:
    secret = SECRET.encode()
    expires_at = int(time.time()) + 30
    token = mint(secret, Delegation("acme", "acme-1", "req_parent", expires_at))
    given = delegation_for(secret, token, "acme", "acme-1", "req_child", time.monotonic() + 60)
    assert given == {"token": token, "expires_at": expires_at}  # the same token, never a new one
    fresh = delegation_for(secret, "sk-test-acme", "acme", "acme-1", "req_child", time.monotonic() + 60)
    assert fresh["token"] != token


def test_plugins_without_a_shared_secret_refuse_to_start(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    routes = tmp_path / "r.yaml"
    budgets = tmp_path / "b.yaml"
    routes.write_text(routes_yaml(sidecar, free_port()))
    budgets.write_text(BUDGETS)
    # several workers (and so Redis): no process may make up its own secret
    app = create_app(
        Settings(
            routes_path=str(routes), budgets_path=str(budgets), workers=2, redis_url="redis://127.0.0.1:1"
        )
    )

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(Exception, match=SECRET_ENV):
        asyncio.run(start())
