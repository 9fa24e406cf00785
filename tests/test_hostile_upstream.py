"""Hostile upstreams and hostile inputs (issue 16): usage, retry hints, embeddings, auth, bounds.

The gateway runs live on loopback (its own HTTP server), the client is the real ``openai`` SDK, and
the upstream is an ``httpx.MockTransport`` that answers with the hostile values. Money is checked
through the admin API (spent and reserved) and Prometheus (``/metrics``) once settlement ran.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import LiveServer, sha
from prometheus_client.parser import text_string_to_metric_families
from upstreams import chat_body, sse, stream_chunks

from gateway.app import create_app
from gateway.settings import Settings

KEY = "sk-test-hostile"
ADMIN = "sk-admin-hostile"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN}"}

ROUTES = """
providers:
  up: {type: openai, base_url: "http://upstream.test/v1", api_key: sk-upstream-secret-abcdefghijklmnop}
  spare: {type: openai, base_url: "http://spare.test/v1", api_key: sk-spare}
  claude: {type: anthropic, base_url: "http://anthropic.test", api_key: sk-ant-upstream}
  local: {type: mock}
models:
  gpt-4o-mini:
    provider: up
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}
    context_window: 128000
    max_output_tokens: 16384
  spare-mini: {provider: spare, upstream: gpt-4o-mini, price: {input_per_mtok: 0.15, output_per_mtok: 0.60}}
  emb: {provider: up, upstream: text-embedding-3-small, price: {input_per_mtok: 0.02, output_per_mtok: 0}}
  mock-emb: {provider: local, price: {input_per_mtok: 0.02, output_per_mtok: 0}}
  mock-chat: {provider: local, price: {input_per_mtok: 1, output_per_mtok: 2}}
  haiku:
    provider: claude
    upstream: claude-3-5-haiku-latest
    price: {input_per_mtok: 0.80, output_per_mtok: 4.00, cached_input_per_mtok: 0.08}
    context_window: 200000
    max_output_tokens: 8192
routes:
  - name: with-spare
    match: {model: guarded}
    targets: [{model: gpt-4o-mini}]
    fallbacks: [spare-mini]
defaults: {timeout_s: 10, retry: {attempts: 2, backoff_initial_s: 0.01, backoff_max_s: 0.05}}
"""

BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 100, period: monthly}}
    keys:
      - {{id: acme-hostile, sha256: "{sha(KEY)}", role: user}}
"""

Reply = Callable[[dict[str, Any]], httpx.Response]


class Upstream:
    """The hostile upstream: ``reply`` decides each answer from the request body."""

    def __init__(self) -> None:
        self.reply: Reply = lambda body: httpx.Response(200, json=chat_body(body["model"]))
        self.hosts: list[str] = []
        self.anthropic_reply: Reply = lambda body: anthropic_message({"input_tokens": 5, "output_tokens": 2})

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        if request.url.host == "spare.test":
            return httpx.Response(200, json=chat_body("gpt-4o-mini", content="from the spare"))
        if request.url.host == "anthropic.test":
            return self.anthropic_reply(json.loads(request.content))
        return self.reply(json.loads(request.content))


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def gw(tmp_path: Path, upstream: Upstream) -> Iterator[LiveServer]:
    routes, budgets = tmp_path / "routes.yaml", tmp_path / "budgets.yaml"
    routes.write_text(ROUTES)
    budgets.write_text(BUDGETS)
    settings = Settings(
        routes_path=str(routes), budgets_path=str(budgets), admin_key=ADMIN, reload_interval_s=0.1
    )
    server = LiveServer(create_app(settings, transport=httpx.MockTransport(upstream.handle))).start()
    yield server
    server.stop()


def client(gw: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)


def hi(c: openai.OpenAI, model: str = "gpt-4o-mini", **kw: Any) -> Any:
    return c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], **kw
    )


def settled_spend(gw: LiveServer, *, requests: int = 1) -> dict[str, Any]:
    """The tenant's spend once ``requests`` requests settled (none reserved, all counted)."""
    deadline = time.monotonic() + 5
    while True:
        spend = httpx.get(gw.url + "/admin/spend", params={"tenant": "acme"}, headers=ADMIN_HEADERS).json()
        if spend["reserved_usd"] == 0 and counted_requests(gw) >= requests:
            return dict(spend)
        assert time.monotonic() < deadline, f"settlement did not finish: {spend}"
        time.sleep(0.02)


def metrics(gw: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(gw.url + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def counted_requests(gw: LiveServer) -> float:
    return sum(v for (name, _), v in metrics(gw).items() if name == "gateway_requests_total")


def metric_sum(gw: LiveServer, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lbl), v in metrics(gw).items()
        if n == name and all(dict(lbl).get(k) == want for k, want in labels.items())
    )


def with_usage(usage: dict[str, Any]) -> Reply:
    return lambda body: httpx.Response(200, json={**chat_body(body["model"]), "usage": usage})


# -- usage sanity -----------------------------------------------------------------------------------------

HOSTILE_USAGE = {
    "negative": ({"prompt_tokens": -1_000_000_000, "completion_tokens": -3_000_000_000}, "usage_negative"),
    "negative_cached": (
        {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": -(10**12)}},
        "usage_negative",
    ),
    "1e15": ({"prompt_tokens": 10**15, "completion_tokens": 10**15}, "usage_implausible"),
    "1e30": ({"prompt_tokens": 1e30, "completion_tokens": 1e30}, "usage_implausible"),
    "string": ({"prompt_tokens": "abc", "completion_tokens": 3}, "usage_malformed"),
    "bool": ({"prompt_tokens": True, "completion_tokens": True}, "usage_malformed"),
    "cached_over_prompt": (
        {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 10**9}},
        "usage_inconsistent",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_USAGE))
def test_hostile_usage_is_counted_instead_and_settles(gw: LiveServer, upstream: Upstream, case: str) -> None:
    usage, kind = HOSTILE_USAGE[case]
    upstream.reply = with_usage(usage)
    raw = hi(client(gw))
    assert raw.http_response.status_code == 200
    cost = Decimal(raw.headers["x-gateway-cost-usd"])
    assert 0 < cost < Decimal("0.001"), cost  # "hi" and "Hello there!" at 0.15/0.60 per Mtok
    spend = settled_spend(gw)
    assert spend["spent_usd"] == pytest.approx(float(cost)) and spend["reserved_usd"] == 0
    assert metric_sum(gw, "gateway_upstream_anomalies_total", kind=kind) == 1
    assert 0 < metric_sum(gw, "gateway_cost_usd_total") < 0.001
    assert metric_sum(gw, "gateway_tokens_total") < 100
    # the tenant is not blocked: the next (honest) answer goes through and is billed as reported
    upstream.reply = with_usage({"prompt_tokens": 12, "completion_tokens": 3})
    honest = hi(client(gw))
    assert honest.headers["x-gateway-cost-usd"] == "0.0000036"
    assert metric_sum(gw, "gateway_upstream_anomalies_total") == 1


def test_hostile_usage_in_a_stream_is_replaced_by_the_count(gw: LiveServer, upstream: Upstream) -> None:
    def reply(body: dict[str, Any]) -> httpx.Response:
        chunks = stream_chunks(body["model"], ["Hello", " there", "!"], usage=True)
        chunks[-1]["usage"] = {"prompt_tokens": -5, "completion_tokens": 10**18}
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=sse(*chunks, "[DONE]")
        )

    upstream.reply = reply
    stream = client(gw).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"
    last = chunks[-1]
    assert last.usage is not None and 0 < last.usage.prompt_tokens < 100
    assert 0 < last.usage.completion_tokens < 10
    cost = Decimal((last.model_extra or {})["x_gateway"]["cost_usd"])
    assert 0 < cost < Decimal("0.001")
    spend = settled_spend(gw)
    assert spend["spent_usd"] == pytest.approx(float(cost))
    assert metric_sum(gw, "gateway_upstream_anomalies_total", kind="usage_negative") == 1


def anthropic_message(usage: dict[str, Any]) -> httpx.Response:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-latest",
        "content": [{"type": "text", "text": "Bonjour !"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    return httpx.Response(200, json=message)


@pytest.mark.parametrize(
    ("usage", "kind"),
    [
        ({"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": -(10**12)}, "usage_negative"),
        ({"input_tokens": "many", "output_tokens": 2}, "usage_malformed"),
        ({"input_tokens": 5, "output_tokens": 10**16}, "usage_implausible"),
    ],
)
def test_hostile_anthropic_usage_is_counted_instead(
    gw: LiveServer, upstream: Upstream, usage: dict[str, Any], kind: str
) -> None:
    upstream.anthropic_reply = lambda body: anthropic_message(usage)
    raw = hi(client(gw), model="haiku")
    assert raw.parse().choices[0].message.content == "Bonjour !"
    cost = Decimal(raw.headers["x-gateway-cost-usd"])
    assert 0 < cost < Decimal("0.001"), cost
    assert settled_spend(gw)["spent_usd"] == pytest.approx(float(cost))
    assert metric_sum(gw, "gateway_upstream_anomalies_total", kind=kind) == 1


def test_non_numeric_usage_through_the_messages_ingress(gw: LiveServer, upstream: Upstream) -> None:
    upstream.reply = with_usage({"prompt_tokens": "abc", "completion_tokens": None})
    r = httpx.post(
        gw.url + "/v1/messages",
        json={"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "Hello there!"
    assert 0 < Decimal(r.headers["x-gateway-cost-usd"]) < Decimal("0.001")


# -- the reservation covers n -----------------------------------------------------------------------------


def test_the_reservation_grows_with_n(gw: LiveServer, upstream: Upstream, tmp_path: Path) -> None:
    # 16,000 output tokens at $0.60/Mtok is ~$0.0096 a choice: n=128 reserves ~$1.23, and a tenant with
    # $1 left is refused, while n=1 goes through.
    (tmp_path / "budgets.yaml").write_text(BUDGETS.replace("usd: 100", "usd: 1"))
    deadline = time.monotonic() + 5
    while True:  # the file reloads within its poll interval
        spend = httpx.get(gw.url + "/admin/spend", params={"tenant": "acme"}, headers=ADMIN_HEADERS).json()
        if spend["limit_usd"] == 1:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert hi(client(gw), max_tokens=16_000, n=1).http_response.status_code == 200
    with pytest.raises(openai.RateLimitError) as info:
        hi(client(gw), max_tokens=16_000, n=128)
    assert info.value.code == "budget_exceeded"


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("n", 1000, "integer_above_max_value"),
        ("n", 0, "integer_below_min_value"),
        ("max_tokens", 0, "integer_below_min_value"),
        ("max_tokens", -5, "integer_below_min_value"),
        ("max_completion_tokens", 10**12, "integer_above_max_value"),
        ("max_tokens", 1.5, "invalid_type"),
        ("temperature", 3, "decimal_above_max_value"),
        ("temperature", -0.5, "decimal_below_min_value"),
        ("top_p", 1.5, "decimal_above_max_value"),
        ("n", "2", "invalid_type"),
    ],
)
def test_numeric_fields_are_range_checked_like_openai(
    gw: LiveServer, upstream: Upstream, field: str, value: Any, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        hi(client(gw), extra_body={field: value})
    assert info.value.code == code and info.value.param == field
    assert info.value.type == "invalid_request_error"
    assert upstream.hosts == [], "refused before any upstream call"


def test_unknown_fields_still_pass_through(gw: LiveServer, upstream: Upstream) -> None:
    seen: list[dict[str, Any]] = []

    def reply(body: dict[str, Any]) -> httpx.Response:
        seen.append(body)
        return httpx.Response(200, json=chat_body(body["model"]))

    upstream.reply = reply
    hi(client(gw), extra_body={"top_k": 1e308, "min_p": -7, "n": 2, "temperature": 2})
    assert seen[0]["top_k"] == 1e308 and seen[0]["min_p"] == -7 and seen[0]["n"] == 2


# -- embeddings: the mock's work and an upstream's vectors are bounded --------------------------------------


@pytest.mark.parametrize(
    ("dimensions", "inputs", "param"),
    [
        (1_000_000_000, 1, "dimensions"),  # refused by the gateway (above MAX_DIMENSIONS)
        (1e308, 1, "dimensions"),
        (0, 1, "dimensions"),
        (20_000, 1, "dimensions"),  # within the gateway's bound, above the mock's
        (4096, 512, "input"),  # 2 M values: more than the mock computes in one request
    ],
)
def test_mock_embeddings_work_is_bounded(gw: LiveServer, dimensions: Any, inputs: int, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).embeddings.create(
            model="mock-emb", input=["x"] * inputs, extra_body={"dimensions": dimensions}
        )
    assert info.value.param == param


def test_mock_embeddings_within_bounds_still_work(gw: LiveServer) -> None:
    out = client(gw).embeddings.create(model="mock-emb", input=["a", "b"], dimensions=64)
    assert [len(d.embedding) for d in out.data] == [64, 64]
    assert math.isclose(sum(v * v for v in out.data[0].embedding), 1.0, rel_tol=1e-4)


@pytest.mark.parametrize("vector", [["a", "b"], [None, 1.0], [{"x": 1}], [1e300]])
def test_base64_embeddings_with_non_numeric_vectors_are_a_502(
    gw: LiveServer, upstream: Upstream, vector: list[Any]
) -> None:
    upstream.reply = lambda body: httpx.Response(
        200,
        json={
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": body["model"],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        },
    )
    with pytest.raises(openai.InternalServerError) as info:
        client(gw).embeddings.create(model="emb", input="x")  # the SDK asks for base64
    assert info.value.status_code == 502
    assert "not a vector of float32 numbers" in info.value.message


def test_base64_embeddings_of_numbers_still_work(gw: LiveServer, upstream: Upstream) -> None:
    upstream.reply = lambda body: httpx.Response(
        200,
        json={
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}],
            "model": body["model"],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        },
    )
    raw = httpx.post(
        gw.url + "/v1/embeddings",
        json={"model": "emb", "input": "x", "encoding_format": "base64"},
        headers={"authorization": f"Bearer {KEY}"},
    )
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert struct.unpack("<2f", packed) == (0.5, -0.25)


# -- retry hints ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after-ms": "nan", "retry-after": "-inf"}, None),
        ({"retry-after": "1e20"}, "3600"),
        ({"retry-after-ms": "1e300"}, "3600"),
        ({"retry-after": "nonsense"}, None),
    ],
)
def test_absurd_retry_hints_are_dropped_or_clamped(
    gw: LiveServer, upstream: Upstream, headers: dict[str, str], expected: str | None
) -> None:
    upstream.reply = lambda body: httpx.Response(
        429, headers=headers, json={"error": {"message": "slow down", "type": "requests"}}
    )
    with pytest.raises(openai.RateLimitError) as info:
        hi(client(gw))
    response = info.value.response
    assert info.value.code == "upstream_rate_limited"
    assert response.headers.get("retry-after") == expected
    if expected is not None:
        assert int(response.headers["retry-after-ms"]) == int(expected) * 1000


# -- upstream auth failures -------------------------------------------------------------------------------


def auth_failure(status: int) -> Reply:
    message = "Incorrect API key provided: sk-upstr*****************mnop. You can find your API key at ..."
    return lambda body: httpx.Response(
        status,
        json={"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}},
    )


@pytest.mark.parametrize("status", [401, 403])
def test_an_upstream_auth_failure_is_not_the_clients(
    gw: LiveServer, upstream: Upstream, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.reply = auth_failure(status)
    with pytest.raises(openai.InternalServerError) as info:
        hi(client(gw))
    err = info.value
    assert err.status_code == 502 and err.code == "upstream_auth_error"
    assert "sk-" not in err.message and "Incorrect API key" not in err.message
    assert err.response.headers["x-should-retry"] == "false"
    assert upstream.hosts == ["upstream.test"], "not retried: it cannot heal"
    assert any("invalid_api_key" in r.getMessage() for r in caplog.records if r.name == "gateway")


def test_an_upstream_auth_failure_falls_back_and_opens_the_circuit(
    gw: LiveServer, upstream: Upstream
) -> None:
    upstream.reply = auth_failure(401)
    for _ in range(7):  # the default breaker opens after 5 failures
        raw = hi(client(gw), model="guarded")
        assert raw.parse().choices[0].message.content == "from the spare"
    assert upstream.hosts.count("upstream.test") == 5, "skipped once its circuit opened"
    assert upstream.hosts.count("spare.test") == 7


def test_an_upstream_auth_failure_on_messages_is_an_api_error(gw: LiveServer, upstream: Upstream) -> None:
    upstream.reply = auth_failure(401)
    r = httpx.post(
        gw.url + "/v1/messages",
        json={"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 502 and r.json()["error"]["type"] == "api_error"
    assert "sk-" not in r.text


# -- admin inputs -----------------------------------------------------------------------------------------


def admin_post(gw: LiveServer, path: str, body: Any) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers=ADMIN_HEADERS)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tenant": "acme", "id": "k" * 70_000}, "id"),
        ({"tenant": "acme", "id": "k" * 129}, "id"),
        ({"tenant": "acme", "id": "a/b"}, "id"),
        ({"tenant": "a" * 200, "id": "k1"}, "tenant"),
        ({"tenant": "acme", "id": "k1", "budget": {"usd": 1e308, "period": "daily"}}, "budget.usd"),
        ({"tenant": "acme", "id": "k1", "budget": {"usd": 1_000_001, "period": "daily"}}, "budget.usd"),
        ({"tenant": "acme", "id": "k1", "budget": {"usd": -1, "period": "daily"}}, "budget.usd"),
        ({"tenant": "acme", "id": "k1", "budget": {"usd": True, "period": "daily"}}, "budget.usd"),
    ],
)
def test_admin_refuses_unbounded_key_ids_and_budgets(
    gw: LiveServer, body: dict[str, Any], param: str
) -> None:
    r = admin_post(gw, "/admin/keys", body)
    assert r.status_code == 400, r.text[:200]
    assert r.json()["error"]["param"] == param
    listed = httpx.get(gw.url + "/admin/keys", params={"tenant": "acme"}, headers=ADMIN_HEADERS).json()
    assert all(k["source"] == "budgets.yaml" for k in listed["data"]), "nothing was stored"


def test_admin_keys_at_the_bounds_work_and_can_be_revoked(gw: LiveServer) -> None:
    key_id = "k" * 128
    r = admin_post(
        gw, "/admin/keys", {"tenant": "acme", "id": key_id, "budget": {"usd": 1_000_000, "period": "daily"}}
    )
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0)
    assert c.chat.completions.create(model="mock-chat", messages=[{"role": "user", "content": "hi"}]).choices
    assert httpx.delete(gw.url + f"/admin/keys/{key_id}", headers=ADMIN_HEADERS).status_code == 200


@pytest.mark.parametrize("headers", [["authorization", "x"], "text", 7])
def test_admin_explain_refuses_headers_that_are_not_an_object(gw: LiveServer, headers: Any) -> None:
    r = admin_post(gw, "/admin/explain", {"body": {"model": "gpt-4o-mini"}, "headers": headers})
    assert r.status_code == 400 and r.json()["error"]["param"] == "headers"
