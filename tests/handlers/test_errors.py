"""Every error is OpenAI's envelope with DESIGN.md's status, and the SDK raises the matching class."""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import BUDGETS, KEY_ACME, KEY_GLOBEX, ROUTES, GatewayFactory
from upstreams import FakeOpenAI

SMALL_BODY_ROUTES = (
    ROUTES
    + """
defaults: {max_body_bytes: 2048, timeout_s: 5}
"""
)


@pytest.fixture
def upstream() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def gw(gateway_factory: GatewayFactory, upstream: FakeOpenAI):
    return gateway_factory(routes=SMALL_BODY_ROUTES, transport=upstream.transport)


def client(gw, key: str = KEY_ACME) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def chat(c: openai.OpenAI, model: str = "gpt-4o-mini", **kw):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **kw)


def assert_envelope(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
        assert param in err["message"]
    assert r.headers["x-request-id"]
    return err


def post(gw, body: object, key: str | None = KEY_ACME, raw: bytes | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        return httpx.post(gw.base_url + "/chat/completions", content=raw, headers=headers)
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers)


def test_malformed_json_is_400(gw) -> None:
    err = assert_envelope(post(gw, None, raw=b'{"model": "gpt-4o-mini", "messages": ['), 400)
    assert err["type"] == "invalid_request_error" and "JSON" in err["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "gpt-4o-mini"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": "hi"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": [{"content": "hi"}]}, "messages[0].role"),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
            "temperature",
        ),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
            "stream",
        ),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5},
            "max_tokens",
        ),
    ],
)
def test_wrong_or_missing_fields_are_400_naming_the_field(gw, body: dict, param: str) -> None:
    assert_envelope(post(gw, body), 400, param)


def test_sdk_bad_request(gw) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(model="gpt-4o-mini", messages=[])
    assert info.value.param == "messages" if hasattr(info.value, "param") else True


def test_missing_and_unknown_key_are_401(gw) -> None:
    assert_envelope(post(gw, {"model": "gpt-4o-mini", "messages": []}, key=None), 400)  # parse runs first
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    err = assert_envelope(post(gw, body, key=None), 401)
    assert err["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as info:
        chat(client(gw, "sk-wrong"))
    assert info.value.request_id and info.value.request_id.startswith("req_")


def test_model_not_allowed_is_403(gw) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(client(gw, KEY_GLOBEX))
    assert "gpt-4o-mini" in info.value.message


def test_unknown_model_is_404(gw) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        chat(client(gw), model="gpt-5")
    assert info.value.code == "model_not_found"


def test_body_too_large_is_413(gw) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 4096}]
        )
    assert info.value.status_code == 413


def test_unknown_path_is_404_envelope(gw) -> None:
    r = httpx.get(gw.base_url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["message"]


def test_a_proxy_path_with_another_method_is_405_envelope(gw) -> None:
    """The proxy endpoints are served ahead of Starlette's router for POST only; other methods still
    get the router's answer, in the API's error format."""
    r = httpx.get(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {KEY_ACME}"})
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_upstream_4xx_passes_through_with_its_message(gw, upstream: FakeOpenAI) -> None:
    upstream.fail_with = httpx.Response(
        400,
        json={
            "error": {
                "message": "Invalid 'messages[0].content': too fancy.",
                "type": "invalid_request_error",
                "param": "messages[0].content",
                "code": "invalid_value",
            }
        },
    )
    with pytest.raises(openai.BadRequestError) as info:
        chat(client(gw))
    assert info.value.body["message"] == "Invalid 'messages[0].content': too fancy."
    assert info.value.code == "invalid_value"
    assert len(upstream.requests) == 1, "a 400 is not retried"


def test_upstream_429_is_429_upstream_rate_limited(gw, upstream: FakeOpenAI) -> None:
    upstream.fail_with = httpx.Response(
        429, headers={"retry-after": "7"}, json={"error": {"message": "slow down", "type": "requests"}}
    )
    with pytest.raises(openai.RateLimitError) as info:
        chat(client(gw))
    assert info.value.code == "upstream_rate_limited"
    assert info.value.response.headers["retry-after"] == "7"


def test_upstream_500_is_502(gw, upstream: FakeOpenAI) -> None:
    upstream.fail_with = httpx.Response(500, json={"error": {"message": "boom", "type": "server_error"}})
    with pytest.raises(openai.InternalServerError) as info:
        chat(client(gw))
    assert info.value.status_code == 502 and "boom" in info.value.message


def test_deadline_is_504(gateway_factory: GatewayFactory) -> None:
    routes = ROUTES.replace(
        "  local: {type: mock}", "  local: {type: mock}\n  slow: {type: mock, fault: timeout}"
    )
    routes = routes.replace("models:\n", "models:\n  slow-chat: {provider: slow}\n")
    routes += "  - {name: slow, match: {model: slow-chat}, timeout_s: 0.3, targets: [{model: slow-chat}]}\n"
    gw = gateway_factory(routes=routes, budgets=BUDGETS)
    with pytest.raises(openai.InternalServerError) as info:
        chat(client(gw), model="slow-chat")
    assert info.value.status_code == 504


def test_stream_failing_after_first_byte_ends_with_error_event(gw, upstream: FakeOpenAI) -> None:
    upstream.break_streams = True
    stream = chat(client(gw), stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert received, "the first chunks arrived before the failure"
    assert "upstream" in info.value.message
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    raw = post(gw, body).text
    last = raw.strip().split("\n\n")[-1]
    assert last.startswith('data: {"error"') and "[DONE]" not in raw


def test_a_huge_unknown_model_name_is_not_echoed_whole(gw) -> None:
    r = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "m" * 1500, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {KEY_ACME}"},
    )
    err = assert_envelope(r, 404)
    assert err["code"] == "model_not_found"
    assert len(err["message"]) < 400 and "…[+1244 chars]" in err["message"]
