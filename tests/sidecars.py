"""The plugin API test sidecar (tests/plugin_api_sidecar.py) on loopback, and a config that uses it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import ROUTES, free_port, sha

SIDECAR_TOKEN = "tok-sidecar-secret"
ADMIN = "sk-operator-for-tests"
DELEGATION_SECRET = "d" * 40

KEYS = {
    "acme-admin": "sk-acme-admin",
    "acme-user": "sk-acme-user",
    "acme-rev": "sk-acme-reviewer",
    "acme-narrow": "sk-acme-narrow",
    "acme-expired": "sk-acme-expired",
    "globex-admin": "sk-globex-admin",
    "globex-user": "sk-globex-user",
}

BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 100, period: monthly}}
    keys:
      - {{id: acme-admin, sha256: "{sha(KEYS["acme-admin"])}", role: admin}}
      - {{id: acme-user, sha256: "{sha(KEYS["acme-user"])}", role: user, budget: {{usd: 10, period: daily}}}}
      - {{id: acme-rev, sha256: "{sha(KEYS["acme-rev"])}", role: reviewer}}
      - {{id: acme-narrow, sha256: "{sha(KEYS["acme-narrow"])}", models: ["mock-*"]}}
      - {{id: acme-expired, sha256: "{sha(KEYS["acme-expired"])}", expires_at: "2020-01-01T00:00:00Z"}}
  globex:
    models: ["mock-*"]
    keys:
      - {{id: globex-admin, sha256: "{sha(KEYS["globex-admin"])}", role: admin}}
      - {{id: globex-user, sha256: "{sha(KEYS["globex-user"])}", role: user}}
"""


def routes_with_plugins(sidecar_url: str, dead_url: str) -> str:
    return (
        ROUTES
        + f"""
plugins:
  review: {{url: "{sidecar_url}", api: true, token: {SIDECAR_TOKEN}}}
  rag: {{url: "{sidecar_url}", api: true, token: {SIDECAR_TOKEN}}}
  guard: {{url: "{sidecar_url}"}}
  down: {{url: "{dead_url}", api: true}}
"""
    )


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


class Sidecar:
    def __init__(self, gateway_url: str = "", port: int | None = None) -> None:
        self.port = port or free_port()
        script = str(Path(__file__).with_name("plugin_api_sidecar.py"))
        self.proc = subprocess.Popen(
            [sys.executable, script, str(self.port), SIDECAR_TOKEN, gateway_url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sidecar exited: {self.proc.stderr.read() if self.proc.stderr else b''!r}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError("sidecar did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
