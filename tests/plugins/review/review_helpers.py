"""Review test helpers: keys, a routes file with review routes, an upstream that can answer with logprobs,
the sidecar as a process, and small API calls. Fixtures live in the test modules (no conftest.py here: a
second module named ``conftest`` would shadow tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import sha
from upstreams import FakeOpenAI, chat_body

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "plugin-token-review"
ANSWER = "Your refund of 120 EUR is approved."

KEYS = {
    "acme-app": "sk-acme-app",
    "acme-app2": "sk-acme-app2",
    "acme-rev": "sk-acme-reviewer",
    "acme-rev2": "sk-acme-reviewer-2",
    "globex-rev": "sk-globex-reviewer",
}

BUDGETS = f"""
tenants:
  acme:
    keys:
      - {{id: acme-app, sha256: "{sha(KEYS["acme-app"])}", role: user}}
      - {{id: acme-app2, sha256: "{sha(KEYS["acme-app2"])}", role: user}}
      - {{id: acme-rev, sha256: "{sha(KEYS["acme-rev"])}", role: reviewer}}
      - {{id: acme-rev2, sha256: "{sha(KEYS["acme-rev2"])}", role: reviewer}}
  globex:
    keys:
      - {{id: globex-rev, sha256: "{sha(KEYS["globex-rev"])}", role: reviewer}}
"""


def routes(review_url: str) -> str:
    def route(name: str, options: str) -> str:
        return f"""
  - name: {name}
    match: {{task: {name}}}
    targets: [{{model: gpt-4o-mini}}]
    plugins: [{{review: {options}}}]"""

    return (
        f"""
providers:
  up: {{type: openai, base_url: "http://upstream.test/v1", api_key: sk-upstream-secret}}
models:
  gpt-4o-mini: {{provider: up, price: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}}}
plugins:
  review:
    {{url: "{review_url}", hooks: [pre, post, tool], timeout_s: 300, on_error: closed, api: true,
      token: {TOKEN}}}
routes:"""
        + route("sync", "{hold: sync, hold_timeout_s: 30}")
        + route("async", "{hold: async}")
        + route("t-reject", "{hold: sync, hold_timeout_s: 0.5, on_timeout: reject}")
        + route("t-release", "{hold: sync, hold_timeout_s: 0.5, on_timeout: release}")
        + route("unsure", "{when: {confidence_below: 0.5}, logprobs: true, hold: async}")
        + route("tools", '{tools: ["billing__*"], hold_timeout_s: 30}')
        + "\n"
    )


class Upstream(FakeOpenAI):
    """Answers ``ANSWER`` (streamed in pieces when asked), with per-token logprobs when asked for them."""

    def __init__(self) -> None:
        super().__init__()
        self.words = ["Your refund", " of 120 EUR", " is approved."]
        self.logprob = -0.1
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if body.get("stream"):
            return await super().handle(request)
        answer = chat_body(body["model"], content=ANSWER)
        if body.get("logprobs"):
            tokens = [
                {"token": w, "logprob": self.logprob, "bytes": None, "top_logprobs": []} for w in self.words
            ]
            answer["choices"][0]["logprobs"] = {"content": tokens, "refusal": None}
        self.requests.append(request)
        return httpx.Response(200, json=answer)


class ReviewProcess:
    """`python -m plugins.review serve` (or another shipped sidecar) as a real process on loopback."""

    def __init__(self, env: dict[str, str] | None = None, *, port: int, module: str = "review") -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                f"plugins.{module}",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PLUGIN_TOKEN": TOKEN, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> ReviewProcess:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"review exited: {out}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("review did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def bearer(key_id: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[key_id]}"}


def queue(gateway_url: str, key_id: str) -> httpx.Response:
    return httpx.get(gateway_url + "/v1/plugins/review/queue", headers=bearer(key_id), timeout=10)


def decide(gateway_url: str, key_id: str, item_id: str, **body: Any) -> httpx.Response:
    url = f"{gateway_url}/v1/plugins/review/queue/{item_id}/decision"
    return httpx.post(url, json=body, headers=bearer(key_id), timeout=10)


def wait_for(check: Callable[[], Any], *, timeout_s: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pending_items(gateway_url: str, key_id: str = "acme-rev", n: int = 1) -> list[dict[str, Any]]:
    """Wait until the tenant's queue holds ``n`` items; return them."""

    def check() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = queue(gateway_url, key_id).json()["items"]
        return items if len(items) >= n else None

    result: list[dict[str, Any]] = wait_for(check, what=f"{n} pending review item(s)")
    return result
