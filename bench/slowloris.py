"""Keyless slow clients against a keyed one: does the keyed client's latency hold? (issue 16)

Starts ``python -m gateway serve --workers 3`` (Redis, the shipped ``mock`` provider) on 127.0.0.1,
measures a keyed client's latency unloaded, then holds ``--connections`` keyless
connections open while measuring it again. The attacker (a child process on uvloop) keeps the count
up: a third of its connections send nothing, a third drip header lines, a third declare a body and
drip it; each one the gateway closes (header or body timeout, 408) is opened again at once. It runs
as several processes of at most 9,000 connections each (one process may not hold 20,000 sockets
where the hard open-files limit is 20,000, as on the machine of the recorded run). Source
addresses are spread over 127.0.0.2-9 so that 20,000 connections and their replacements do not run
out of ephemeral ports.

The keyed client measures two ways, one request at a time: on a kept-alive connection (as an SDK's
pool does) and with a new connection per request (so accepting is measured too), in rounds of
``--requests`` alternating between the two, for ``--hold-s``. PASS when each attacked p50 (over all
its rounds) is within 2x its unloaded p50 and no keyed request failed.

    python -m bench.slowloris [--connections 20000] [--workers 3] [--requests 200] [--hold-s 45]
                              [--gateway-arg=--header-timeout-s=10 ...]

Each side raises its open-files limit (``RLIMIT_NOFILE``) as far as it may (the hard limit; root
with CAP_SYS_RESOURCE beyond); the gateway raises its soft limit to the hard one itself at start.
Its connection cap (default 10,000 per worker) is at most half its open-files limit, so with a hard
limit of 20,000 a worker holds 10,000 connections: 20,000 need more than two workers.
Not a test: figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import ChildProcess, cpu_seconds, free_port, python_module, redis_ping, rss_kib, worker_pids
from bench.upstream import run_loop

KEY = "sk-bench-slowloris"
CHAT = json.dumps({"model": "mock-chat", "messages": [{"role": "user", "content": "hello"}]}).encode()
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
PER_ATTACKER = 9_000


def raise_nofile(target: int) -> int:
    """Soft and hard ``RLIMIT_NOFILE`` to ``target`` where allowed (root may raise the hard limit)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((target, max(hard, target)), (min(target, hard), hard)):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- the attacker (a child process)


async def _attack(port: int, count: int, drip_s: float) -> None:
    loop = asyncio.get_running_loop()
    closed = {"idle": 0, "headers": 0, "body": 0}
    answered: dict[int, int] = {}
    held = 0

    async def one(i: int) -> None:
        nonlocal held
        kind = ("idle", "headers", "body")[i % 3]
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(SOURCES[i % len(SOURCES)], 0)
                )
            except OSError:
                await asyncio.sleep(0.5)
                continue
            held += 1
            try:
                if kind == "headers":
                    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
                elif kind == "body":
                    writer.write(
                        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
                        b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n"
                    )
                read = asyncio.ensure_future(reader.read(4096))
                while not read.done():
                    await asyncio.wait([read], timeout=drip_s * (0.5 + (i % 100) / 100))
                    if not read.done() and kind != "idle":
                        writer.write(b"x-drip: 1\r\n" if kind == "headers" else b"x")
                data = read.result()
                if data[:12].startswith(b"HTTP/1.1 "):
                    status = int(data[9:12])
                    answered[status] = answered.get(status, 0) + 1
            except OSError:  # reset by the gateway rather than closed: counted apart too
                answered[0] = answered.get(0, 0) + 1
            finally:
                held -= 1
                closed[kind] += 1
                writer.close()

    tasks = []
    for i in range(count):  # ramp up ~4,000 connections a second
        tasks.append(loop.create_task(one(i)))
        if i % 400 == 399:
            await asyncio.sleep(0.1)
    while True:
        print(json.dumps({"held": held, "closed": closed, "answered": answered}), flush=True)
        await asyncio.sleep(1.0)


def attacker_main(port: int, count: int, drip_s: float) -> None:
    raise_nofile(count + 1024)
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(_attack(port, count, drip_s))


# ---------------------------------------------------------------- the keyed client


def _request(host: str) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {KEY}\r\ncontent-length: {len(CHAT)}\r\n\r\n"
    ).encode() + CHAT


def _read_response(sock: socket.socket) -> int:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a response")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head[9:12])


def keyed_latencies(port: int, requests: int, reuse: bool) -> tuple[list[float], dict[int, int]]:
    """Seconds per request over ``requests`` sequential requests, and the count of each status
    that was not 200 (0: the connection failed)."""
    request = _request(f"127.0.0.1:{port}")
    times: list[float] = []
    failed: dict[int, int] = {}
    sock: socket.socket | None = None
    for _ in range(requests):
        started = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request)
            status = _read_response(sock)
        except OSError:
            status = 0
            sock = None
        times.append(time.perf_counter() - started)
        if status != 200:
            failed[status] = failed.get(status, 0) + 1
        if not reuse and sock is not None:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return times, failed


@dataclass
class Latency:
    """One keyed client's requests: p50, p99, the worst p50 of a round, failures."""

    times: list[float] = field(default_factory=list)
    worst_round_p50: float = 0.0
    failed: dict[int, int] = field(default_factory=dict)

    def add(self, times: list[float], failed: dict[int, int]) -> None:
        self.times += times
        self.worst_round_p50 = max(self.worst_round_p50, statistics.median(times))
        for status, n in failed.items():
            self.failed[status] = self.failed.get(status, 0) + n

    def p(self, q: float) -> float:
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


# ---------------------------------------------------------------- the run


def _configs(tmp: Path) -> tuple[Path, Path]:
    routes, budgets = tmp / "routes.yaml", tmp / "budgets.yaml"
    routes.write_text(
        "providers:\n  local: {type: mock}\n"
        "models:\n  mock-chat: {provider: local, price: {input_per_mtok: 1, output_per_mtok: 2}}\n"
    )
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    budgets.write_text(f'tenants:\n  bench:\n    keys:\n      - {{id: bench-1, sha256: "{digest}"}}\n')
    return routes, budgets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slowloris", description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="keyed requests per measurement")
    parser.add_argument("--hold-s", type=float, default=45.0, help="hold the attack this long at least")
    parser.add_argument("--drip-s", type=float, default=4.0, help="mean pause between dripped bytes")
    parser.add_argument("--gateway-arg", action="append", default=[], help="more `gateway serve` flags")
    parser.add_argument("--attacker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attacker:
        attacker_main(args.port, args.connections, args.drip_s)
        return 0

    nofile = raise_nofile(1 << 16)
    print(f"open files limit: {nofile} (inherited by the gateway and the attackers)", file=sys.stderr)
    port, redis_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="slowloris-") as tmp_name, contextlib.ExitStack() as exits:
        tmp = Path(tmp_name)
        routes, budgets = _configs(tmp)
        redis = ChildProcess(
            "redis",
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            tmp / "redis.log",
            tmp,
        )
        exits.enter_context(redis)
        redis.wait_until(lambda: redis_ping(redis_port), 10)
        argv_gw = python_module(
            "gateway", "serve", "--port", str(port), "--routes", str(routes), "--budgets", str(budgets),
            "--workers", str(args.workers), "--log-level", "warning", *args.gateway_arg,
        )  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env["GATEWAY_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        gateway = exits.enter_context(ChildProcess("gateway", argv_gw, tmp / "gateway.log", Path.cwd(), env))
        gateway.wait_healthy(port, 60)
        time.sleep(2)  # every worker up
        keyed_latencies(port, 200, reuse=True)  # warm-up
        keyed_latencies(port, 200, reuse=False)
        unloaded = {True: Latency(), False: Latency()}
        for _ in range(3):
            for reuse in (True, False):
                unloaded[reuse].add(*keyed_latencies(port, args.requests, reuse))
        workers = worker_pids(gateway.pid)
        rss_before = sum(rss_kib(pid) or 0 for pid in workers)
        cpu_before = cpu_seconds(gateway.pid)
        attackers = []
        for first in range(0, args.connections, PER_ATTACKER):
            count = min(PER_ATTACKER, args.connections - first)
            argv_attack = python_module(
                "bench.slowloris", "--attacker", "--port", str(port), "--connections", str(count),
                "--drip-s", str(args.drip_s),
            )  # fmt: skip
            proc = subprocess.Popen(argv_attack, stdout=subprocess.PIPE, text=True, start_new_session=True)
            exits.callback(proc.wait, 10)
            exits.callback(proc.terminate)
            attackers.append(proc)

        def status() -> dict[str, Any]:
            """The attackers' counts, summed (each prints one JSON line a second)."""
            total: dict[str, Any] = {"held": 0, "closed": {}, "answered": {}}
            for proc in attackers:
                assert proc.stdout is not None
                line = json.loads(proc.stdout.readline())
                total["held"] += line["held"]
                for key in ("closed", "answered"):
                    for name, n in line[key].items():
                        total[key][name] = total[key].get(name, 0) + n
            return total

        started = time.monotonic()
        now = status()
        while now["held"] < args.connections * 0.98 and time.monotonic() - started < 120:
            now = status()
        print(f"attack ramped up in {time.monotonic() - started:.1f} s: {now}", file=sys.stderr)
        held_at_start = now["held"]
        loaded = {True: Latency(), False: Latency()}
        rss_peak = 0
        held_min = held_at_start
        measure_started = time.monotonic()
        while time.monotonic() - measure_started < args.hold_s:
            for reuse in (True, False):
                loaded[reuse].add(*keyed_latencies(port, args.requests, reuse))
                rss_peak = max(rss_peak, sum(rss_kib(pid) or 0 for pid in workers))
                now = status()
                held_min = min(held_min, now["held"])
        cpu = cpu_seconds(gateway.pid) - cpu_before
        elapsed = time.monotonic() - started
    figures = Figures(
        nofile, unloaded, loaded, held_at_start, held_min, now, rss_before, rss_peak, cpu, elapsed
    )
    ok = all(loaded[r].p(0.5) <= 2 * unloaded[r].p(0.5) and not loaded[r].failed for r in (True, False))
    print(_report(args, figures))
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


@dataclass
class Figures:
    nofile: int
    unloaded: dict[bool, Latency]
    loaded: dict[bool, Latency]
    held_at_start: int
    held_min: int
    status: dict[str, Any]
    rss_before: int
    rss_peak: int
    cpu: float
    elapsed: float


def _report(args: argparse.Namespace, f: Figures) -> str:
    rows = [
        "| keyed client | unloaded p50 / p99 (ms) | attacked p50 / p99 (ms) | ratio p50 "
        "| worst round's p50, unloaded / attacked (ms) | requests attacked | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for reuse, name in ((True, "kept-alive connection"), (False, "new connection per request")):
        u, a = f.unloaded[reuse], f.loaded[reuse]
        rows.append(
            f"| {name} | {u.p(0.5):.2f} / {u.p(0.99):.2f} | {a.p(0.5):.2f} / {a.p(0.99):.2f} "
            f"| {a.p(0.5) / u.p(0.5):.2f}x | {u.worst_round_p50 * 1000:.2f} / {a.worst_round_p50 * 1000:.2f} "
            f"| {len(a.times)} | {sum(a.failed.values())} {a.failed or ''} |"
        )
    return "\n".join(
        [
            f"slowloris: {args.connections} keyless connections (1/3 idle, 1/3 dripping headers, "
            f"1/3 dripping a body, a byte every ~{args.drip_s:g} s) against "
            f"`gateway serve --workers {args.workers}` "
            f"(Redis, mock provider, flags: {' '.join(args.gateway_arg) or 'defaults'}), open files "
            f"{f.nofile}; {args.requests} keyed requests per round, one at a time, over a "
            f"{args.hold_s:.0f} s hold",
            "",
            *rows,
            "",
            f"- connections held: {f.held_at_start} at the end of the ramp, at least {f.held_min} during the "
            f"hold, {f.status['held']} at the end",
            f"- closed by the gateway, then reopened by the attacker: {f.status['closed']}",
            f"- answers the attacker got (status: count; 0 = reset): {f.status['answered']}",
            f"- gateway workers' RSS: {f.rss_before / 1024:.0f} MB before the attack, "
            f"{f.rss_peak / 1024:.0f} MB peak",
            f"- gateway CPU during the attack: {f.cpu:.1f} s over {f.elapsed:.0f} s",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
