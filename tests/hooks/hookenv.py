"""The routes a hooked gateway runs with (every plugin on the test sidecar), and what tests read back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from conftest import KEY_ACME, Gateway
from plugin_sidecar import Sidecar
from upstreams import FakeOpenAI

SECRET = "s" * 40
ADMIN_KEY = "sk-admin-hooks"


def routes_yaml(side: Sidecar, dead_port: int) -> str:
    def plugin(name: str, hooks: str, on_error: str = "closed", timeout_s: float = 0.5) -> str:
        return (
            f"  {name}: {{url: '{side.plugin_url(name)}', hooks: [{hooks}], on_error: {on_error},"
            f" timeout_s: {timeout_s}, token: tok-{name}}}\n"
        )

    dead = f"http://127.0.0.1:{dead_port}"
    return (
        """
providers:
  up: {type: openai, base_url: "http://upstream.test/v1", api_key: sk-upstream-secret}
models:
  gpt-4o-mini: {provider: up, price: {input_per_mtok: 0.15, output_per_mtok: 0.60}}
plugins:
"""
        + plugin("a", "pre, post, tool")
        + plugin("b", "pre, post")
        + plugin("shut", "pre, post", "closed")
        + plugin("ajar", "pre, post", "open")
        + plugin("only", "pre")
        + f"  deadshut: {{url: '{dead}', hooks: [pre], on_error: closed}}\n"
        + f"  deadajar: {{url: '{dead}', hooks: [pre], on_error: open}}\n"
        + """
routes:
  - name: one
    match: {task: one}
    targets: [{model: gpt-4o-mini}]
    plugins: [{a: {level: 3, post_stream: buffer}}]
  - {name: two, match: {task: two}, targets: [{model: gpt-4o-mini}], plugins: [a, b]}
  - {name: audit, match: {task: audit}, targets: [{model: gpt-4o-mini}], post_stream: audit, plugins: [a]}
  - {name: shut, match: {task: shut}, targets: [{model: gpt-4o-mini}], plugins: [shut]}
  - {name: ajar, match: {task: ajar}, targets: [{model: gpt-4o-mini}], plugins: [ajar]}
  - {name: deadshut, match: {task: deadshut}, targets: [{model: gpt-4o-mini}], plugins: [deadshut]}
  - {name: deadajar, match: {task: deadajar}, targets: [{model: gpt-4o-mini}], plugins: [deadajar]}
  - {name: plain, match: {task: plain}, targets: [{model: gpt-4o-mini}]}
  - {name: cached, match: {task: cached}, targets: [{model: gpt-4o-mini}], cache: {ttl_s: 60, mode: always},
     plugins: [a]}
  - {name: cachedpre, match: {task: cachedpre}, targets: [{model: gpt-4o-mini}],
     cache: {ttl_s: 60, mode: always}, plugins: [only]}
"""
    )


@dataclass
class Hooked:
    gateway: Gateway
    side: Sidecar
    upstream: FakeOpenAI

    def client(self, task: str, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.base_url,
            api_key=KEY_ACME,
            max_retries=0,
            default_headers={"x-gateway-task": task},
            **kw,
        )

    def metrics(self) -> str:
        import httpx

        return httpx.get(self.gateway.url + "/metrics").text


def access_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    """The access log lines, once ``count`` are written (they go out after the response)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) == count
            return lines
        time.sleep(0.02)
