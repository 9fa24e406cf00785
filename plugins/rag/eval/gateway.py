"""Embeddings for the evaluation, through a real gateway's ``/v1/embeddings``.

By default a gateway is started on a free loopback port (``python -m gateway serve``, a separate process:
the sidecar never imports the gateway) with a throw-away routes and budgets file that serve the embedding
model from the built-in ``mock`` provider, so the figures are those of the vectors the shipped demo uses.
``--gateway URL --api-key K --model M`` measures an existing gateway's model instead (a real provider).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

MODEL = "text-embedding-3-small"
BATCH = 128
START_TIMEOUT_S = 60.0
ROOT = Path(__file__).resolve().parents[3]

_ROUTES = """\
providers:
  local: {type: mock}
models:
  %s:
    provider: local
    price: {input_per_mtok: 0.02, output_per_mtok: 0}
routes: []
"""
_BUDGETS = """\
tenants:
  rag-eval:
    budget: {usd: 100, period: daily}
    limits: {rpm: 100000, tpm: 100000000}
    keys:
      - id: rag-eval
        sha256: "%s"
        role: user
"""


class Embedder:
    """A batched ``/v1/embeddings`` client (``base_url`` ends in ``/v1``, as the openai SDK's does)."""

    def __init__(self, base_url: str, api_key: str, model: str, dimensions: int | None) -> None:
        self.model = model
        self.dimensions = dimensions
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"}, timeout=120.0
        )
        self.calls = 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(texts), BATCH):
            body: dict[str, object] = {"model": self.model, "input": list(texts[start : start + BATCH])}
            if self.dimensions:
                body["dimensions"] = self.dimensions
            response = await self._client.post("/embeddings", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"/v1/embeddings answered {response.status_code}: {response.text[:500]}")
            self.calls += 1
            data = sorted(response.json()["data"], key=lambda d: d["index"])
            out.extend(d["embedding"] for d in data)
        return out

    async def close(self) -> None:
        await self._client.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def loopback_gateway(model: str = MODEL) -> Iterator[tuple[str, str]]:
    """A gateway process on 127.0.0.1 serving ``model`` from the mock provider: yields (base URL, key)."""
    key = "sk-rag-eval-" + os.urandom(8).hex()
    with tempfile.TemporaryDirectory(prefix="rag-eval-gw-") as tmp:
        routes, budgets = Path(tmp) / "routes.yaml", Path(tmp) / "budgets.yaml"
        routes.write_text(_ROUTES % model)
        budgets.write_text(_BUDGETS % hashlib.sha256(key.encode()).hexdigest())
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["GATEWAY_LEDGER_URL"] = "off"
        cmd = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--routes", str(routes), "--budgets", str(budgets), "--log-level", "warning"]
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, url)
            yield url + "/v1", key
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"the gateway exited with status {proc.returncode}:\n{err[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the gateway did not answer /healthz within {START_TIMEOUT_S:.0f} s")
