"""Bring up what a benchmark measures: mock upstream, optional Redis, and the gateway, on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import Target
from bench.procs import ChildProcess, free_port, python_module, redis_ping

HOST = "127.0.0.1"
MODEL = "bench-model"
CHAT_PATH = "/v1/chat/completions"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class StackOptions:
    gateway_module: str = "gateway"
    workers: int | None = None
    redis: bool = False
    limits: bool = False
    """Give the tenant a budget and rpm/tpm limits, so every request is admitted and settled."""
    chunks: int = 20
    delay_ms: float = 0.0
    startup_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Stack:
    """The running children (by role: upstream, store, gateway) and the two ways to reach the upstream."""

    procs: dict[str, ChildProcess]
    direct: Target
    gateway: Target


def write_configs(tmp: Path, upstream_port: int, secret: str, limits: bool = False) -> tuple[Path, Path]:
    """routes.yaml with one model on the mock upstream; budgets.yaml with one key, and limits if asked.

    The limits are far above what a run can reach: they exist so admission and settlement run.
    """
    routes = tmp / "routes.yaml"
    routes.write_text(
        "providers:\n"
        f"  up: {{type: openai, base_url: 'http://{HOST}:{upstream_port}/v1', api_key: x}}\n"
        "models:\n"
        f"  {MODEL}:\n"
        "    provider: up\n"
        f"    upstream: {MODEL}\n"
        "    price: {input_per_mtok: 0.15, output_per_mtok: 0.6}\n"
        "routes: []\n"
    )
    budgets = tmp / "budgets.yaml"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    key = f"{{id: bench-key, sha256: '{digest}', role: user}}"
    tenant = "    budget: {usd: 1000000, period: monthly}\n    limits: {rpm: 100000000, tpm: 2000000000}\n"
    budgets.write_text(f"tenants:\n  bench:\n{tenant if limits else ''}    keys:\n      - {key}\n")
    return routes, budgets


def start_stack(opts: StackOptions, tmp: Path, exits: contextlib.ExitStack) -> Stack:
    """Start every child; each is stopped when ``exits`` closes, whatever happens after."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: dict[str, ChildProcess] = {}

    def child(role: str, argv: list[str]) -> ChildProcess:
        procs[role] = exits.enter_context(ChildProcess(role, argv, tmp / f"{role}.log", REPO_ROOT, env))
        return procs[role]

    upstream_port = free_port()
    up_args = ["--host", HOST, "--port", str(upstream_port), "--chunks", str(opts.chunks)]
    up_args += ["--delay-ms", str(opts.delay_ms)]
    child("upstream", python_module("bench.upstream", *up_args)).wait_healthy(upstream_port, 10.0)

    if opts.redis:
        redis_port = _start_redis(child)
        env["GATEWAY_REDIS_URL"] = f"redis://{HOST}:{redis_port}/0"

    gateway_port, secret = free_port(), "sk-bench-" + secrets.token_hex(16)
    routes, budgets = write_configs(tmp, upstream_port, secret, opts.limits)
    gw_args = ["serve", "--host", HOST, "--port", str(gateway_port), "--routes", str(routes)]
    gw_args += ["--budgets", str(budgets)]
    if opts.workers is not None:
        gw_args += ["--workers", str(opts.workers)]
    gateway = child("gateway", python_module(opts.gateway_module, *gw_args))
    gateway.wait_healthy(gateway_port, opts.startup_timeout_s)
    return Stack(
        procs,
        direct=Target(HOST, upstream_port, CHAT_PATH, bearer="x"),
        gateway=Target(HOST, gateway_port, CHAT_PATH, bearer=secret),
    )


def _start_redis(child: Callable[[str, list[str]], ChildProcess]) -> int:
    """A throwaway redis-server (no persistence) for multi-worker runs."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("--redis needs redis-server on PATH (or set GATEWAY_REDIS_URL yourself)")
    port = free_port()
    argv = [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
    child("store", argv).wait_until(lambda: redis_ping(port), 10.0)
    return port
