"""`make bench-quick` works: the smoke of the benchmark runs the whole pipeline end to end.

A benchmark is not a timed test: this checks that every phase ran and every request succeeded, and
that the report has its tables, never how fast anything was. Needs redis-server, like `make bench`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "## Gateway benchmark",
    "### What the gateway adds",
    "### Throughput, gateway / direct",
    "### Per-chunk pass-through cost",
    "### Memory: RSS per worker",
    "concurrent streams, opened at once",
    "### Cache lookups",
    "### All runs",
)


def _table(report: str, title: str) -> list[dict[str, str]]:
    """The rows of the markdown table following the heading that starts with ``title``."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    block: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            break
    assert block, f"no table after {title!r}"
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in block]
    header, body = cells[0], cells[2:]
    return [dict(zip(header, row, strict=True)) for row in body]


def test_bench_quick_runs_the_whole_pipeline_without_errors() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = proc.stdout
    for section in SECTIONS:
        assert section in report, section
    assert "whole pipeline:" in report
    assert re.search(r"machine speed probe .*: \d+ ms at the start, \d+ ms at the end", report)

    runs = _table(report, "### All runs")
    targets = {r["target"] for r in runs}
    assert targets == {"direct", "gateway ×1", "gateway ×2"}
    assert all(r["err"] == "0" and int(r["ok"]) > 0 for r in runs)
    # every gateway answer was a cache miss: each request was unique
    assert all(r["x-gateway-cache"] == f"miss {r['ok']}" for r in runs if r["target"] != "direct")

    overhead = _table(report, "### What the gateway adds")
    scenarios = {r["scenario"] for r in overhead}
    for kind in ("chat", "stream"):
        assert {f"{kind} c={c}" for c in (1, 16, 64)} <= scenarios
    assert {r["workers"] for r in overhead} == {"1", "2"}
    assert all(r["gw/direct"] != "-" for r in overhead)

    cache = _table(report, "### Cache lookups")
    assert all(r["hit"] == "0" and int(r["miss"]) > 0 for r in cache)

    memory = _table(report, "### Memory")
    assert {r["workers"] for r in memory} == {"1", "2"}
    assert all(r["RSS MiB after soak"] != "-" for r in memory)

    held = _table(report, "### 100 concurrent streams")
    assert all(r["done with [DONE]"] == r["streams"] == "100" and r["errors"] == "0" for r in held)
