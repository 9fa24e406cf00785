"""Paired measurement: gateway CPU per request of ``POST /v1/responses`` against ``/v1/chat/completions``
on the same gateway (concurrency 1, whole pipeline, the bench's mock upstream behind both).

``python -m bench.responses [--rounds 12] [--seconds 1]``: one gateway, alternating short turns of chat
and Responses requests asking the same (``store: false``, so it is the translation that is measured;
``--store`` keeps each turn, adding the stored-response write after each answer).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.compare import _measure
from bench.harness import Stack, StackOptions, shapes
from bench.loadgen import Load, run_load
from bench.suite import SEQ_MARK, request_body
from bench.upstream import run_loop


def responses_body(model: str, nonce: str, store: bool) -> bytes:
    prompt = f"Say hello to the benchmark. Run {nonce}, request {SEQ_MARK.decode()}."
    body = {"model": model, "input": prompt, "max_output_tokens": 32, "store": store}
    return json.dumps(body, separators=(",", ":")).encode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.responses", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--store", action="store_true", help="store each turn (store: true)")
    a = p.parse_args(argv)
    seq = itertools.count(1)
    figures: dict[str, list[tuple[float, float, float]]] = {"chat": [], "responses": []}
    with tempfile.TemporaryDirectory(prefix="gw-responses-") as tmp, contextlib.ExitStack() as exits:
        stack = Stack(StackOptions(), Path(tmp), exits)
        model = shapes(stack.opts)["chat"].model
        nonce = f"rsp{time.time():.0f}"
        bodies = {
            "chat": request_body(model, False, nonce),
            "responses": responses_body(model, nonce, a.store),
        }
        gw = exits.enter_context(stack.gateway(1))
        chat = gw.target()
        targets = {"chat": chat, "responses": dataclasses.replace(chat, path="/v1/responses")}
        for name, target in targets.items():  # warm-up
            run_loop(run_load(target, Load(1, 1500, a.seconds, False), bodies[name], seq=seq))
        for _ in range(a.rounds):
            for name, target in targets.items():
                figures[name].append(
                    run_loop(_measure(target, gw.proc.pid, bodies[name], seq, a.seconds, False))
                )
    base = figures["chat"]
    for name, runs in figures.items():
        cpu, p50 = (sorted(run[k] for run in runs) for k in range(2))
        line = (
            f"{name}: CPU ms/req min {cpu[0]:.3f} median {statistics.median(cpu):.3f}; "
            f"p50 ms min {p50[0]:.3f} median {statistics.median(p50):.3f} (n={len(runs)})"
        )
        if name != "chat":
            d = [statistics.median(r[k] - b[k] for r, b in zip(runs, base, strict=True)) for k in range(2)]
            line += f"; paired vs chat: CPU {d[0]:+.3f}, p50 {d[1]:+.3f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
