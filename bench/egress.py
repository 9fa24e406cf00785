"""Client CPU per upstream call: ``FastTransport`` (the direct path) against httpx's own transport (the
path a provider behind a proxy or with ``tls:`` takes, gateway/egress.py). Why both are kept.

``python -m bench.egress [--calls 2000] [--rounds 5]`` starts ``bench.upstream`` in a subprocess (its
CPU is not counted), then in alternating rounds sends ``--calls`` chat calls through
``gateway.providers.http.post_json`` (and as many streamed ones through ``open_stream``) on each
transport, one at a time, and prints the median CPU microseconds per call of this process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import httpx

from bench.upstream import run_loop
from gateway.providers.http import open_stream, post_json
from gateway.transport import FastTransport

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**BODY, "stream": True}


async def _round(transport: httpx.AsyncBaseTransport, url: str, calls: int, stream: bool) -> float:
    started = time.process_time()
    for _ in range(calls):
        if stream:
            answer = await open_stream(transport, "bench", url, body=STREAM, headers={}, timeout_s=10)
            async for _part in answer.aiter_bytes():
                pass
            await answer.aclose()
        else:
            await post_json(transport, "bench", url, body=BODY, headers={}, timeout_s=10)
    return (time.process_time() - started) / calls * 1e6


async def _main(port: int, calls: int, rounds: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    transports: dict[str, httpx.AsyncBaseTransport] = {
        "FastTransport": FastTransport(),
        "httpx.AsyncHTTPTransport": httpx.AsyncHTTPTransport(trust_env=False),
    }
    for stream in (False, True):
        samples: dict[str, list[float]] = {name: [] for name in transports}
        for transport in transports.values():  # warm-up: connections, imports
            await _round(transport, url, 50, stream)
        for _ in range(rounds):
            for name, transport in transports.items():
                samples[name].append(await _round(transport, url, calls, stream))
        kind = "stream (20 chunks)" if stream else "chat"
        for name, values in samples.items():
            print(f"{kind:20} {name:26} {statistics.median(values):8.1f} µs CPU/call (median of {rounds})")
    for transport in transports.values():
        await transport.aclose()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    a = p.parse_args(argv)
    port = a.port
    if port == 0:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    upstream = subprocess.Popen([sys.executable, "-m", "bench.upstream", "--port", str(port)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1, trust_env=False)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        run_loop(_main(port, a.calls, a.rounds))
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


if __name__ == "__main__":
    main()
