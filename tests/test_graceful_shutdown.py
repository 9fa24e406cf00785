"""SIGTERM with streams open: the replica stops accepting, finishes them, settles their spend, exits 0.

Real processes: a redis-server, ``bench.upstream`` streaming slowly, and two gateway replicas on the
same Redis; the second one's admin API reads the spend the first one settled before it exited.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import KEY_ACME, free_port, sha
from replicas import ADMIN_KEY, start_replicas

pytestmark = pytest.mark.slow

STREAMS = 5
CHUNKS = 15
INPUT_PER_MTOK, OUTPUT_PER_MTOK = 2.0, 4.0
GRACE_S = 30  # gateway/cli.py serve: timeout_graceful_shutdown


@pytest.fixture
def upstream_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.upstream", "--port", str(port), "--delay-ms", "100"]
    cmd += ["--chunks", str(CHUNKS)]
    log = (tmp_path / "upstream.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 10
    while not _accepts(port):
        assert proc.poll() is None and time.monotonic() < deadline, "bench.upstream did not start"
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


class Stream(threading.Thread):
    """One streamed chat completion, read to the end; ``first`` is set when its first chunk arrives."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.first = threading.Event()
        self.lines: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {
            "model": "slow-chat",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 64,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"authorization": f"Bearer {KEY_ACME}"}
        try:
            with httpx.stream("POST", self.url, json=body, headers=headers, timeout=60) as response:
                assert response.status_code == 200, response.read()
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.lines.append(line[len("data: ") :])
                        self.first.set()
        except BaseException as exc:  # handed to the test thread, which fails on it
            self.error = exc
            self.first.set()

    def chunks(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.lines if line != "[DONE]"]

    def cost_usd(self) -> Decimal:
        usage = self.chunks()[-1]["usage"]
        assert isinstance(usage, dict)
        return (
            Decimal(usage["prompt_tokens"]) * Decimal(INPUT_PER_MTOK)
            + Decimal(usage["completion_tokens"]) * Decimal(OUTPUT_PER_MTOK)
        ) / Decimal(1_000_000)


def test_sigterm_finishes_open_streams_settles_and_exits(
    tmp_path: Path, redis_url: str, upstream_port: int
) -> None:
    (tmp_path / "routes.yaml").write_text(
        f"""
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{upstream_port}/v1", api_key: sk-bench}}
models:
  slow-chat:
    provider: up
    price: {{input_per_mtok: {INPUT_PER_MTOK}, output_per_mtok: {OUTPUT_PER_MTOK}}}
routes: []
"""
    )
    (tmp_path / "budgets.yaml").write_text(
        f"""
tenants:
  acme:
    budget: {{usd: 100, period: total}}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
"""
    )
    draining, reader = start_replicas(
        2, tmp_path / "routes.yaml", tmp_path / "budgets.yaml", redis_url, tmp_path
    )
    try:
        streams = [Stream(draining.url + "/v1/chat/completions") for _ in range(STREAMS)]
        for s in streams:
            s.start()
        for s in streams:
            assert s.first.wait(timeout=30), "no first chunk"
            assert s.error is None, s.error

        signalled = time.monotonic()
        draining.proc.send_signal(signal.SIGTERM)

        # uvicorn closes its listening socket at once: a newcomer is refused while the streams go on.
        refused = False
        while not refused and time.monotonic() - signalled < 10:
            try:
                httpx.get(draining.url + "/healthz", timeout=1)
            except httpx.TransportError:
                refused = True
            else:
                time.sleep(0.02)
        assert refused, "the replica still accepted connections after SIGTERM"

        assert draining.proc.wait(timeout=GRACE_S + 10) == 0
        assert time.monotonic() - signalled < GRACE_S + 5
        for s in streams:
            s.join(timeout=10)
            assert s.error is None, s.error
            assert s.lines[-1] == "[DONE]"
            content = [c for c in s.chunks() if c["choices"] and c["choices"][0]["delta"].get("content")]  # type: ignore[index]
            assert len(content) == CHUNKS
        expected = sum((s.cost_usd() for s in streams), Decimal(0))
        assert expected > 0

        spend = httpx.get(
            reader.url + "/admin/spend",
            params={"tenant": "acme"},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
        ).json()
        assert spend["reserved_usd"] == 0
        # Costs are settled in whole nano-dollars, rounded up per request.
        assert spend["spent_usd"] == pytest.approx(float(expected), abs=STREAMS * 1e-9)
    finally:
        draining.stop()
        reader.stop()
