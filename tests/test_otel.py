"""OpenTelemetry: one GenAI-convention span per request when configured; nothing imported when not."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import KEY_ACME, GatewayFactory, sha
from upstreams import FakeOpenAI, chat_body, chunk, sse

from gateway import otel


def test_off_unless_configured() -> None:
    assert otel.from_env(dict, environ={}) is None
    assert otel.from_env(dict, environ={"GATEWAY_OTEL": "0"}) is None
    assert otel.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert otel.enabled({"GATEWAY_OTEL": "1"})


# A subprocess: what it imports is its own. redis-py imports parts of opentelemetry itself when they are
# installed (redis.observability), so "nothing imported" is checked for the tracing SDK and the exporter.
_SERVE_ONE = """
import importlib.abc, os, sys
for name in list(os.environ):
    if name.startswith("OTEL_") or name == "GATEWAY_OTEL":
        del os.environ[name]
if sys.argv[1] == "hidden":
    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "opentelemetry":
                raise ImportError(name)
            return None
    sys.meta_path.insert(0, Hide())
    os.environ["GATEWAY_OTEL"] = "1"  # asked for, not installed: a warning, and the gateway still serves
from starlette.testclient import TestClient
from gateway.app import create_app
from gateway.settings import Settings
settings = Settings(routes_path=sys.argv[2], budgets_path=sys.argv[3])
with TestClient(create_app(settings)) as client:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-t"})
    assert r.status_code == 200, r.text
    assert client.app.state.gateway.metrics.spans is None
loaded = [m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))]
assert not loaded, loaded
"""


@pytest.mark.parametrize("mode", ["off", "hidden"])
def test_off_or_not_installed_costs_nothing(tmp_path: Path, mode: str) -> None:
    """Tracing off (or asked for without the extra): requests are served and no tracer is ever built."""
    routes, budgets = tmp_path / "routes.yaml", tmp_path / "budgets.yaml"
    routes.write_text("providers: {p: {type: mock}}\nmodels: {m: {provider: p}}\n")
    budgets.write_text(f"tenants: {{t: {{keys: [{{id: k, sha256: {sha('sk-t')}}}]}}}}\n")
    command = [sys.executable, "-c", _SERVE_ONE, mode, str(routes), str(budgets)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- with the ``otel`` extra installed -------------------------------------------------------------------


def memory_spans(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Route the gateway's OTLP exporter to an in-memory one and switch tracing on."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    monkeypatch.setenv("GATEWAY_OTEL", "1")
    monkeypatch.setattr(otel, "_otlp_exporter", lambda: exporter)
    real_build = otel.build
    # one by one rather than batched, so a span is there as soon as the request settles
    monkeypatch.setattr(otel, "build", lambda e, p, batch=True: real_build(e, p, batch=False))
    return exporter


def finished(exporter: Any, count: int) -> list[Any]:
    deadline = time.monotonic() + 5
    while len(exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    spans = list(exporter.get_finished_spans())
    assert len(spans) == count
    return spans


def test_chat_and_error_spans(gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = memory_spans(monkeypatch)  # skips without the extra
    from opentelemetry.trace import SpanKind, StatusCode

    gw = gateway_factory(transport=FakeOpenAI().transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    (span,) = finished(exporter, 1)
    assert span.name == "chat gpt-4o"
    assert span.kind == SpanKind.CLIENT
    attrs = dict(span.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"  # the provider's type, not its name ("up")
    assert attrs["gen_ai.request.model"] == "gpt-4o"
    assert attrs["gen_ai.response.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert (attrs["gateway.tenant"], attrs["gateway.route"]) == ("acme", "alias")
    assert "error.type" not in attrs and span.status.status_code == StatusCode.UNSET
    assert span.end_time > span.start_time

    c.embeddings.create(model="text-embedding-3-small", input="hi")
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    embedding, failed = finished(exporter, 3)[1:]
    assert embedding.name == "embeddings text-embedding-3-small"
    assert failed.name == "chat no-such-model"
    assert failed.attributes["error.type"] == "model_not_found"
    assert failed.status.status_code == StatusCode.ERROR
    assert "gen_ai.usage.input_tokens" not in failed.attributes


# -- trace context and finish reasons (issue 17) ---------------------------------------------------------

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def two_choices(request: httpx.Request) -> httpx.Response:
    """An upstream answering with two choices (n=2) that stop for different reasons, whole or streamed."""
    body = json.loads(request.content)
    model = body["model"]
    if body.get("stream"):
        events = [
            chunk(model, {"role": "assistant", "content": "a"}),
            {
                **chunk(model, {"content": "b"}),
                "choices": [{"index": 1, "delta": {"content": "b"}, "finish_reason": None}],
            },
            {**chunk(model, {}), "choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]},
            chunk(model, {}, "length"),
            "[DONE]",
        ]
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse(*events))
    answer = chat_body(model)
    first = answer["choices"][0]
    answer["choices"] = [{**first, "finish_reason": "length"}, {**first, "index": 1, "finish_reason": "stop"}]
    return httpx.Response(200, json=answer)


def test_traceparent_is_continued_and_a_malformed_one_ignored(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = memory_spans(monkeypatch)
    gw = gateway_factory(transport=FakeOpenAI().transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    c.chat.completions.create(model="gpt-4o", messages=messages, extra_headers={"traceparent": traceparent})
    (span,) = finished(exporter, 1)
    assert span.context.trace_id == int(TRACE_ID, 16)  # the caller's trace
    assert span.parent is not None and span.parent.span_id == int(PARENT_ID, 16) and span.parent.is_remote
    assert span.context.span_id != int(PARENT_ID, 16)  # a child, not the caller's span itself
    assert span.context.trace_flags.sampled

    for malformed in (f"00-{TRACE_ID}-{PARENT_ID}", "00-" + "0" * 32 + f"-{PARENT_ID}-01", "garbage"):
        c.chat.completions.create(model="gpt-4o", messages=messages, extra_headers={"traceparent": malformed})
    for root in finished(exporter, 4)[1:]:
        assert root.parent is None and root.context.trace_id != int(TRACE_ID, 16)
        assert root.status.status_code.name == "UNSET"  # and the request was served


def test_finish_reasons_on_spans(gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = memory_spans(monkeypatch)
    fake = FakeOpenAI()
    gw = gateway_factory(transport=fake.transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    messages = [{"role": "user", "content": "weather in Paris?"}]
    c.chat.completions.create(model="gpt-4o", messages=messages)
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    c.chat.completions.create(model="gpt-4o", messages=messages, tools=[tool])  # type: ignore[list-item]
    list(c.chat.completions.create(model="gpt-4o", messages=messages, stream=True))
    c.embeddings.create(model="text-embedding-3-small", input="hi")
    plain, tools, streamed, embedding = finished(exporter, 4)
    assert plain.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert tools.attributes["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert streamed.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert "gen_ai.response.finish_reasons" not in embedding.attributes

    gw2 = gateway_factory(transport=httpx.MockTransport(two_choices))
    c2 = openai.OpenAI(base_url=gw2.base_url, api_key=KEY_ACME, max_retries=0)
    c2.chat.completions.create(model="gpt-4o", messages=messages, n=2)
    list(c2.chat.completions.create(model="gpt-4o", messages=messages, n=2, stream=True))
    whole, chunks = finished(exporter, 6)[4:]
    assert whole.attributes["gen_ai.response.finish_reasons"] == ("length", "stop")  # in choice order
    assert chunks.attributes["gen_ai.response.finish_reasons"] == ("length", "stop")
