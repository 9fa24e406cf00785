"""OpenTelemetry: one GenAI-convention span per request when configured; nothing imported when not."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import KEY_ACME, GatewayFactory, sha
from upstreams import FakeOpenAI

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
