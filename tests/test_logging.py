"""The access log: one JSON line per request with every field, no secrets and no content by default;
a route's ``log_content`` adds the prompt and answer text, redacted and truncated."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import openai
import pytest
from conftest import KEY_ACME, GatewayFactory, sha
from upstreams import FakeOpenAI, chat_body

from gateway.config.model import ContentLogPolicy
from gateway.pipeline.content_log import content_for_log
from gateway.redact import MASK, redact

CLIENT_KEY = "sk-gw-PLANTEDclientkey0123456789"
OPENAI_KEY = "sk-proj-PLANTEDabcdefghijklmnop1234"
ANTHROPIC_KEY = "sk-ant-api03-PLANTEDzyxwvutsrq"
AWS_KEY = "AKIAPLANTED000000000"
PASSWORD = "Hunter2Planted!"
EMAIL = "planted.person@example.com"
CARD = "4111 1111 1111 1111"
BEARER = "PLANTEDbearer.token.value"
PROMPT_MARKER = "PLANTED-PROMPT-MARKER"
ANSWER_MARKER = "PLANTED-ANSWER-MARKER"
ANSWER_SECRET = "PLANTEDanswerToken99"

SECRETS = (CLIENT_KEY, OPENAI_KEY, ANTHROPIC_KEY, AWS_KEY, PASSWORD, EMAIL, CARD, BEARER, ANSWER_SECRET)
PROMPT = (
    f"{PROMPT_MARKER} my key is {OPENAI_KEY} and {ANTHROPIC_KEY}, aws {AWS_KEY}, password={PASSWORD}, "
    f"mail {EMAIL}, card {CARD}, header Authorization: Bearer {BEARER}"
)

BUDGETS = f"""
tenants:
  acme:
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
      - {{id: acme-planted, sha256: "{sha(CLIENT_KEY)}", role: user}}
"""

ROUTES = """
providers:
  up: {type: openai, base_url: "http://upstream.test/v1", api_key: sk-upstream-secret}
models:
  gpt-4o-mini: {provider: up, price: {input_per_mtok: 0.15, output_per_mtok: 0.60}}
  audited: {provider: up, upstream: gpt-4o-mini, price: {input_per_mtok: 0.15, output_per_mtok: 0.60}}
routes:
  - name: audited
    match: {model: audited}
    targets: [{model: audited}]
    log_content: {max_chars: 300}
"""

FIELDS = {
    "request_id",
    "tenant",
    "key_id",
    "route",
    "model",
    "provider",
    "attempts",
    "retries",
    "fallbacks",
    "cache",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "latency_ms",
    "gateway_ms",
    "upstream_ms",
    "ttft_ms",
    "status",
    "error_code",
}


class Upstream(FakeOpenAI):
    """Answers with text that carries a marker and a secret, to see whether the answer is logged."""

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("stream"):
            return await super().handle(request)
        self.requests.append(request)
        content = f"{ANSWER_MARKER} here you go: token={ANSWER_SECRET}"
        return httpx.Response(200, json=chat_body(body["model"], content=content))


def access_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    """The access log lines, once ``count`` are written (they go out after the response)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) == count
            return lines
        time.sleep(0.02)


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    out = []
    for r in caplog.records:
        out.append(r.getMessage())
        if r.exc_info or r.exc_text:
            out.append(logging.Formatter().formatException(r.exc_info) if r.exc_info else r.exc_text or "")
    return "\n".join(out)


def send_all(c: openai.OpenAI, model: str) -> None:
    messages: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    c.chat.completions.create(model=model, messages=messages)
    list(c.chat.completions.create(model=model, messages=messages, stream=True))


def test_no_secrets_and_no_content_by_default(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = gateway_factory(routes=ROUTES, budgets=BUDGETS, transport=Upstream().transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)
    send_all(c, "gpt-4o-mini")
    wrong = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY + "x", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    lines = access_lines(caplog, 3)
    text = everything_logged(caplog)
    for planted in (*SECRETS, PROMPT_MARKER, ANSWER_MARKER, "be brief", "sk-upstream-secret"):
        assert planted not in text
    ok, stream, refused = lines
    for line in lines:
        assert line.keys() >= FIELDS
        assert "prompt" not in line and "answer" not in line
    assert (ok["tenant"], ok["key_id"], ok["route"], ok["model"], ok["provider"]) == (
        "acme",
        "acme-planted",
        "default",
        "gpt-4o-mini",
        "up",
    )
    assert (ok["attempts"], ok["retries"], ok["fallbacks"], ok["status"], ok["error_code"]) == (
        1,
        0,
        0,
        200,
        None,
    )
    assert ok["input_tokens"] > 0 and ok["output_tokens"] > 0 and float(ok["cost_usd"]) > 0
    assert ok["ttft_ms"] is None and stream["ttft_ms"] is not None and stream["stream"] is True
    assert (refused["status"], refused["error_code"], refused["key_id"]) == (401, "invalid_api_key", None)


def test_opt_in_content_is_redacted_and_truncated(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = gateway_factory(routes=ROUTES, budgets=BUDGETS, transport=Upstream().transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)
    send_all(c, "audited")
    long_prompt = PROMPT_MARKER + " " + "x" * 1000 + OPENAI_KEY
    c.chat.completions.create(model="audited", messages=[{"role": "user", "content": long_prompt}])
    ok, stream, long = access_lines(caplog, 3)
    text = everything_logged(caplog)
    for planted in SECRETS:
        assert planted not in text
    assert ok["route"] == "audited"
    assert ok["prompt"].startswith(f"system: be brief\nuser: {PROMPT_MARKER} my key is {MASK} and {MASK}")
    assert f"password={MASK}" in ok["prompt"] and ok["prompt"].count(MASK) == 7
    assert ok["answer"] == f"{ANSWER_MARKER} here you go: token={MASK}"
    # streams log the prompt only: their answer is never assembled in one piece
    assert stream["prompt"] == ok["prompt"] and "answer" not in stream
    assert long["prompt"].startswith("user: " + PROMPT_MARKER)
    assert len(long["prompt"]) == 301 and long["prompt"].endswith("…")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {OPENAI_KEY}.", f"key {MASK}."),
        (f"{ANTHROPIC_KEY}", MASK),
        (f"id {AWS_KEY}", f"id {MASK}"),
        ("Authorization: Bearer abc.def", f"Authorization: {MASK}"),
        ('{"api_key": "v4lue", "secret":x}', f'{{"api_key": {MASK} "secret":{MASK}'),
        ("API-KEY=abc TOKEN: xyz", f"API-KEY={MASK} TOKEN: {MASK}"),
        (f"write to {EMAIL}!", f"write to {MASK}!"),
        (f"card {CARD} or 4111-1111-1111-1111", f"card {MASK} or {MASK}"),
        # not Luhn-valid: an order number or a timestamp is left alone
        ("order 4111 1111 1111 1112 at 1700000000123", "order 4111 1111 1111 1112 at 1700000000123"),
        ("sk-short and a normal sentence", "sk-short and a normal sentence"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_content_for_log_shapes() -> None:
    policy = ContentLogPolicy(max_chars=50)
    parts = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]
    }
    assert content_for_log(policy, parts, None) == {"prompt": "user: hi"}
    assert content_for_log(policy, {"prompt": ["a", "b"]}, b'{"choices": [{"text": "c"}]}') == {
        "prompt": "a b",
        "answer": "c",
    }
    # embeddings: the input is text, the answer is vectors (not logged); token-id input is not text
    assert content_for_log(policy, {"input": "e"}, b'{"data": [{"embedding": [0.1]}]}') == {"prompt": "e"}
    assert content_for_log(policy, {"input": [[1, 2]]}, b"not json") == {"prompt": ""}
