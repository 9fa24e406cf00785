"""The plugin SDK: its app (token, protocol, errors, API mount), answer values, settings and client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from plugins.sdk import (
    Answer,
    Delegation,
    GatewayCallError,
    GatewayClient,
    HookCall,
    PluginSettings,
    Rejected,
    continue_,
    create_app,
    modify,
    reject,
    respond,
)
from plugins.sdk.app import token_matches

TOKEN = "tok-123"
AUTH = {"authorization": f"Bearer {TOKEN}"}
seen: list[HookCall] = []


async def pre(call: HookCall) -> Answer:
    seen.append(call)
    text = json.dumps(call.request)
    if "boom" in text:
        raise RuntimeError("the plugin broke")
    if "refuse" in text:
        raise Rejected(403, "not_here", "refused", {"why": "asked"})
    if "answer" in text:
        return respond({"object": "chat.completion", "choices": []})
    return modify(request={**call.request, "seen": True}, annotations={"n": 1})


async def post(call: HookCall) -> Answer:
    return continue_({"status": str((call.response or {}).get("id"))})


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path, "tenant": request.headers.get("x-gateway-tenant")})


def body(hook: str = "pre", **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "protocol": 1,
        "hook": hook,
        "request_id": "r1",
        "endpoint": "/v1/chat/completions",
        "tenant": "acme",
        "key_id": "k1",
        "role": "user",
        "route": "support",
        "config": {"a": 1},
        "request": {"model": "m", "messages": []},
        "delegation": {"token": "gwd1.x.y", "expires_at": 1700000030},
        "deadline": 1700000030.5,
    }
    out.update(fields)
    return out


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app({"pre": pre, "post": post}, token=TOKEN, api_routes=[Route("/docs/{id}", echo)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://p") as c:
        yield c


async def test_a_hook_call_is_parsed_and_answered(client: httpx.AsyncClient) -> None:
    seen.clear()
    r = await client.post("/hooks/pre", json=body(), headers=AUTH)
    assert r.status_code == 200
    assert r.json() == {
        "action": "modify",
        "request": {"model": "m", "messages": [], "seen": True},
        "annotations": {"n": 1},
    }
    call = seen[0]
    assert (call.hook, call.request_id, call.tenant, call.key_id, call.role, call.route) == (
        "pre",
        "r1",
        "acme",
        "k1",
        "user",
        "support",
    )
    assert call.config == {"a": 1}
    assert call.delegation == Delegation("gwd1.x.y", 1700000030.0)
    assert call.deadline == 1700000030.5


async def test_every_call_but_healthz_needs_the_plugin_token(client: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"authorization": "Bearer nope"},
        {"authorization": TOKEN},
        {"authorization": f"bearer {TOKEN}x"},
    ):
        r = await client.post("/hooks/pre", json=body(), headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        r = await client.get("/api/docs/7", headers=headers)
        assert r.status_code == 401
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/api/docs/7", headers={**AUTH, "x-gateway-tenant": "acme"})
    assert r.json() == {"path": "/api/docs/7", "tenant": "acme"}


async def test_protocol_breaks_are_400s(client: httpx.AsyncClient) -> None:
    cases = [
        body(protocol=2),
        {k: v for k, v in body().items() if k != "protocol"},
        body(hook="post"),  # the body's hook is not the URL's
        body(request="hello"),
        body(config=[1]),
        [1, 2],
    ]
    for case in cases:
        r = await client.post("/hooks/pre", json=case, headers=AUTH)
        assert r.status_code == 400, case
        assert r.json()["error"]["code"] == "protocol_error"
    r = await client.post("/hooks/pre", content=b"{not json", headers=AUTH)
    assert r.status_code == 400
    r = await client.post("/hooks/post", json=body("post"), headers=AUTH)  # a post call without a response
    assert r.status_code == 400 and "response" in r.json()["error"]["message"]


async def test_unserved_hooks_are_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/hooks/tool", json=body("tool"), headers=AUTH)
    assert r.status_code == 404
    r = await client.post("/hooks/nope", json=body("nope"), headers=AUTH)
    assert r.status_code == 404


async def test_a_failing_hook_is_a_500_and_rejected_is_a_reject(client: httpx.AsyncClient) -> None:
    r = await client.post("/hooks/pre", json=body(request={"messages": [], "x": "boom"}), headers=AUTH)
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "plugin_error"
    assert "the plugin broke" not in r.text  # the traceback stays in the plugin's log
    r = await client.post("/hooks/pre", json=body(request={"x": "refuse"}), headers=AUTH)
    assert r.json() == {
        "action": "reject",
        "status": 403,
        "code": "not_here",
        "message": "refused",
        "annotations": {"why": "asked"},
    }
    r = await client.post("/hooks/pre", json=body(request={"x": "answer"}), headers=AUTH)
    assert r.json() == {"action": "respond", "response": {"object": "chat.completion", "choices": []}}
    r = await client.post("/hooks/post", json=body("post", response={"id": "c1"}), headers=AUTH)
    assert r.json() == {"action": "continue", "annotations": {"status": "c1"}}


async def test_without_a_token_the_app_does_not_check() -> None:
    app = create_app({"pre": pre}, token=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://p") as c:
        assert (await c.post("/hooks/pre", json=body())).status_code == 200


def test_answer_builders_refuse_what_the_protocol_does_not_allow() -> None:
    with pytest.raises(ValueError):
        modify()
    with pytest.raises(ValueError):
        modify(request={}, response={})
    with pytest.raises(ValueError):
        reject(200, "ok", "not an error")
    with pytest.raises(ValueError):
        create_app({"later": pre}, token=None)
    assert continue_().to_json() == {"action": "continue"}


def test_token_matches() -> None:
    assert token_matches("abc", "Bearer abc")
    assert not token_matches("abc", "Bearer abcd")
    assert not token_matches("abc", None)
    assert not token_matches("abc", "abc")


def test_settings_from_env() -> None:
    env = {
        "PLUGIN_TOKEN": "t",
        "GATEWAY_URL": "http://127.0.0.1:8080/",
        "REDIS_URL": "redis://x",
        "PLUGIN_DATA_DIR": "/d",
    }
    assert PluginSettings.from_env(env) == PluginSettings("t", "http://127.0.0.1:8080", "/d", "redis://x")
    assert PluginSettings.from_env({"PLUGIN_TOKEN": ""}) == PluginSettings(None, None, None, None)


async def test_the_gateway_client_sends_the_delegation_token_and_maps_errors() -> None:
    got: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        got.append(request)
        if b"fail" in request.content:
            return httpx.Response(429, json={"error": {"message": "slow down", "type": "rate_limit"}})
        if b"garbage" in request.content:
            return httpx.Response(200, content=b"<html>")
        return httpx.Response(200, json={"object": "chat.completion"})

    client = GatewayClient("http://gw.test/", transport=httpx.MockTransport(handler))
    delegation = Delegation("gwd1.a.b", time.time() + 5)
    try:
        answer = await client.chat_completions(
            {"model": "m"}, delegation=delegation, deadline=time.time() + 5
        )
        assert answer == {"object": "chat.completion"}
        assert str(got[0].url) == "http://gw.test/v1/chat/completions"
        assert got[0].headers["authorization"] == "Bearer gwd1.a.b"
        with pytest.raises(GatewayCallError) as failed:
            await client.chat_completions({"model": "fail"}, delegation=delegation)
        assert failed.value.status == 429 and "slow down" in str(failed.value)
        with pytest.raises(GatewayCallError, match="not JSON"):
            await client.chat_completions({"model": "garbage"}, delegation=delegation)
    finally:
        await client.aclose()
