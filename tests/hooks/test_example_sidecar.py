"""The README's example sidecar (tests/hooks/example_sidecar.py) works as documented, as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import BUDGETS, KEY_ACME, GatewayFactory, free_port
from upstreams import FakeOpenAI

from gateway.delegation import SECRET_ENV


@pytest.fixture(scope="module")
def example() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PLUGIN_TOKEN": "example-token", "PORT": str(port)}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("example_sidecar.py"))], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the example sidecar did not start"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_readme_example_redacts_and_blocks(
    gateway_factory: GatewayFactory, example: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "e" * 32)
    routes = f"""
providers:
  up: {{type: openai, base_url: "http://upstream.test/v1", api_key: sk-up}}
models:
  gpt-4o-mini: {{provider: up}}
plugins:
  redact: {{url: "{example}", hooks: [pre], on_error: closed, token: example-token}}
  strict: {{url: "{example}", hooks: [pre], on_error: closed, token: example-token}}
  wrongtoken: {{url: "{example}", hooks: [pre], on_error: closed, token: nope}}
routes:
  - {{name: redact, match: {{task: redact}}, targets: [{{model: gpt-4o-mini}}], plugins: [redact]}}
  - name: strict
    match: {{task: strict}}
    targets: [{{model: gpt-4o-mini}}]
    plugins: [{{strict: {{block: true}}}}]
  - {{name: wrong, match: {{task: wrong}}, targets: [{{model: gpt-4o-mini}}], plugins: [wrongtoken]}}
"""
    upstream = FakeOpenAI()
    gw = gateway_factory(routes, BUDGETS, transport=upstream.transport)

    def ask(task: str) -> object:
        client = openai.OpenAI(
            base_url=gw.base_url, api_key=KEY_ACME, max_retries=0, default_headers={"x-gateway-task": task}
        )
        messages = [{"role": "user", "content": "Mail jane.doe@example.com the report"}]
        return client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]

    raw = ask("redact")
    assert upstream.json()["messages"][0]["content"] == "Mail [email] the report"
    assert raw.http_response.json()["x_gateway"]["plugins"] == {"redact": {"emails": 1}}  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as caught:
        ask("strict")
    assert caught.value.code == "pii_detected"
    with pytest.raises(openai.InternalServerError) as refused:  # the sidecar refuses a call without its token
        ask("wrong")
    assert refused.value.code == "plugin_unavailable"
    assert len(upstream.requests) == 1
