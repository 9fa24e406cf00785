"""What the RAG hooks add to a request, end to end: ``python -m plugins.rag.bench [--requests 300]``.

Starts a gateway (``python -m gateway serve``, mock provider for chat and embeddings, no ledger) and the
RAG sidecar (``python -m plugins.rag serve`` on its embedded Postgres) on loopback, ingests the shipped
evaluation corpus (plugins/rag/eval/corpus) through ``/v1/plugins/rag``, then sends the same questions
alternately to a route without plugins and to a route with ``rag`` (pre: one embeddings call through the
gateway and one hybrid search; post: the citation check), and prints p50/p95 of each and the difference.
The mock answers at once, so the difference is the hooks' own cost: what a real model's seconds hide.

Also printed: ingestion end to end through the API (parse, chunk, embed through the gateway with the
mock, store), chunks per second. Search speed at 10k/100k chunks and ingestion without embedding are
``python -m plugins.rag.bench_search``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "eval" / "corpus"
TOKEN = "bench-rag-" + os.urandom(6).hex()
KEY = "sk-bench-rag-" + os.urandom(6).hex()
QUESTIONS = (
    "How do I reset my password?",
    "When are invoices issued?",
    "How do I add a seat to my plan?",
    "What happens when a webhook delivery fails?",
    "How long are audit log entries kept?",
    "Which limits apply to the files API?",
)

ROUTES = """
providers:
  local: {type: mock}
models:
  mock-chat: {provider: local, price: {input_per_mtok: 1, output_per_mtok: 2}}
  text-embedding-3-small: {provider: local, price: {input_per_mtok: 0.02, output_per_mtok: 0}}
plugins:
  rag: {url: "%s", hooks: [pre, post], timeout_s: 10, on_error: closed, api: true, token: "%s"}
routes:
  - name: grounded
    match: {task: grounded}
    targets: [{model: mock-chat}]
    plugins: [{rag: {collection: docs, top_k: 5, min_score: 0.0, on_no_context: pass}}]
  - name: plain
    match: {task: plain}
    targets: [{model: mock-chat}]
"""
BUDGETS = """
tenants:
  bench:
    budget: {usd: 1000, period: daily}
    limits: {rpm: 1000000, tpm: 1000000000}
    keys:
      - {id: bench, sha256: "%s", role: user}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({proc.returncode})")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(requests: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    os.chmod(tmp, 0o755)  # run as root, the embedded Postgres runs as its own user
    gw_port, rag_port = _free_port(), _free_port()
    gw_url, rag_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{rag_port}"
    (tmp / "routes.yaml").write_text(ROUTES % (rag_url, TOKEN))
    (tmp / "budgets.yaml").write_text(BUDGETS % hashlib.sha256(KEY.encode()).hexdigest())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "RAG_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(GATEWAY_LEDGER_URL="off", GATEWAY_STATE_FILE=str(tmp / "state.json"))
    env["GATEWAY_DELEGATION_SECRET"] = os.urandom(24).hex()
    rag = subprocess.Popen(
        [sys.executable, "-m", "plugins.rag", "serve", "--port", str(rag_port), "--log-level", "warning"],
        env={**env, "PLUGIN_TOKEN": TOKEN, "GATEWAY_URL": gw_url, "PLUGIN_DATA_DIR": str(tmp / "rag")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    serve = ["serve", "--port", str(gw_port), "--routes", str(tmp / "routes.yaml")]
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", *serve, "--budgets", str(tmp / "budgets.yaml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        _wait(rag_url, rag)
        _wait(gw_url, gateway)
        headers = {"authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=gw_url, headers=headers, timeout=60) as http:
            files = sorted(CORPUS.glob("*.md"))
            started, chunks = time.perf_counter(), 0
            for f in files:
                r = http.post(
                    "/v1/plugins/rag/collections/docs/documents",
                    json={"id": f.stem, "text": f.read_text(), "format": "markdown"},
                )
                r.raise_for_status()
                chunks += int(r.json().get("chunks") or r.json().get("chunks_total") or 0)
            took = time.perf_counter() - started
            print(f"ingested {len(files)} Markdown files, {chunks} chunks, through the API with the mock's")
            print(f"  embeddings: {chunks / took:,.0f} chunks/s end to end ({took:.2f} s)")
            times: dict[str, list[float]] = {"plain": [], "grounded": []}
            for n in range(requests + 20):  # 20 warm-up rounds, not counted
                question = QUESTIONS[n % len(QUESTIONS)]
                for task in ("plain", "grounded"):
                    body = {"model": "mock-chat", "messages": [{"role": "user", "content": question}]}
                    t0 = time.perf_counter()
                    r = http.post("/v1/chat/completions", json=body, headers={"x-gateway-task": task})
                    elapsed = time.perf_counter() - t0
                    r.raise_for_status()
                    if n >= 20:
                        times[task].append(elapsed * 1000)
            for task, values in times.items():
                print(
                    f"{task:>9}: p50 {statistics.median(values):6.2f} ms   p95 {_pct(values, 0.95):6.2f} ms"
                    f"   ({len(values)} requests)"
                )
            p50 = statistics.median(times["grounded"]) - statistics.median(times["plain"])
            p95 = _pct(times["grounded"], 0.95) - _pct(times["plain"], 0.95)
            print(
                f"rag hooks add: p50 {p50:.2f} ms, p95 {p95:.2f} ms "
                "(pre: embed + hybrid search; post: citations)"
            )
    finally:
        for proc in (gateway, rag):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugins.rag.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per route")
    run(parser.parse_args(argv).requests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
