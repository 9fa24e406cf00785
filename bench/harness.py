"""Bring up what a benchmark measures: mock upstream, optional Redis, and gateways, on loopback.

The upstream and the store live for the whole benchmark; a gateway is started per worker count, so
every gateway configuration is measured against the same upstream and the same direct runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import Target
from bench.procs import ChildProcess, free_port, python_module, redis_ping

HOST = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
REPO_ROOT = Path(__file__).resolve().parents[1]
PRICE = "{input_per_mtok: 0.15, output_per_mtok: 0.6}"


@dataclass(frozen=True, slots=True)
class StackOptions:
    gateway_module: str = "gateway"
    redis: bool = True
    limits: bool = True
    """Give the tenant a budget and rpm/tpm limits, so every request is admitted and settled."""
    cache: bool = True
    """Put the bench models behind routes with ``cache: {ttl_s: 3600, mode: always}``."""
    chunks: int = 20
    long_chunks: int = 200
    delay_ms: float = 0.0
    slow_delay_ms: float = 250.0
    startup_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Shape:
    """One kind of answer: the model to ask the gateway for, and how to ask the upstream directly.

    The gateway reaches the mock upstream through a provider whose ``headers`` carry the shape; the
    direct path sends the same headers itself.
    """

    model: str
    upstream_headers: tuple[tuple[str, str], ...] = ()


def shapes(opts: StackOptions) -> dict[str, Shape]:
    """``chat`` (``chunks`` per stream), ``long`` (``long_chunks``), ``slow`` (paced by ``slow_delay_ms``)."""
    return {
        "chat": Shape("bench-model"),
        "long": Shape("bench-model-long", (("x-bench-chunks", str(opts.long_chunks)),)),
        "slow": Shape("bench-model-slow", (("x-bench-delay-ms", f"{opts.slow_delay_ms:g}"),)),
    }


def write_configs(tmp: Path, upstream_port: int, secret: str, opts: StackOptions) -> tuple[Path, Path]:
    """routes.yaml: one route per shape, each to its own deployment on the mock upstream; budgets.yaml:
    one tenant with one key, and a budget and limits if asked.

    The limits are far above what a run can reach: they exist so admission and settlement run.
    ``defaults.max_concurrent_upstream`` is left unset (no cap), so 1,000 open streams all go upstream.
    """
    base_url = f"http://{HOST}:{upstream_port}/v1"
    providers, models, routes = [], [], []
    cache = "\n    cache: {ttl_s: 3600, mode: always}" if opts.cache else ""
    for name, shape in shapes(opts).items():
        headers = ", ".join(f"{k}: '{v}'" for k, v in shape.upstream_headers)
        extra = f", headers: {{{headers}}}" if headers else ""
        providers.append(f"  up-{name}: {{type: openai, base_url: '{base_url}', api_key: x{extra}}}")
        models.append(f"  {shape.model}: {{provider: up-{name}, upstream: bench-model, price: {PRICE}}}")
        routes.append(
            f"  - name: bench-{name}\n    match: {{model: {shape.model}}}\n"
            f"    targets: [{{model: {shape.model}}}]{cache}"
        )
    text = "providers:\n{}\nmodels:\n{}\nroutes:\n{}\n".format(*map("\n".join, (providers, models, routes)))
    routes_path = tmp / "routes.yaml"
    routes_path.write_text(text)
    budgets = tmp / "budgets.yaml"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    key = f"{{id: bench-key, sha256: '{digest}', role: user}}"
    tenant = "    budget: {usd: 1000000, period: monthly}\n    limits: {rpm: 100000000, tpm: 2000000000}\n"
    budgets.write_text(f"tenants:\n  bench:\n{tenant if opts.limits else ''}    keys:\n      - {key}\n")
    return routes_path, budgets


@dataclass(frozen=True, slots=True)
class Gateway:
    proc: ChildProcess
    workers: int
    port: int
    bearer: str

    def target(self) -> Target:
        return Target(HOST, self.port, CHAT_PATH, bearer=self.bearer)


class Stack:
    """The upstream and the optional store, running until ``exits`` closes; gateways on demand."""

    def __init__(self, opts: StackOptions, tmp: Path, exits: contextlib.ExitStack) -> None:
        self.opts = opts
        self._tmp = tmp
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.procs: dict[str, ChildProcess] = {}
        self.upstream_port = free_port()
        up_args = ["--host", HOST, "--port", str(self.upstream_port), "--chunks", str(opts.chunks)]
        up_args += ["--delay-ms", str(opts.delay_ms)]
        upstream = self._child(exits, "upstream", python_module("bench.upstream", *up_args))
        upstream.wait_healthy(self.upstream_port, 10.0)
        if opts.redis:
            redis_port = _start_redis(lambda role, argv: self._child(exits, role, argv))
            self.env["GATEWAY_REDIS_URL"] = f"redis://{HOST}:{redis_port}/0"
        # The spend ledger on, in every run: with Redis it is off unless GATEWAY_LEDGER_URL names a
        # database (gateway/ledger), and its writer thread is part of what a request costs.
        self.env.setdefault("GATEWAY_LEDGER_URL", f"sqlite:///{tmp}/ledger.sqlite3")
        self.secret = "sk-bench-" + secrets.token_hex(16)
        self.routes, self.budgets = write_configs(tmp, self.upstream_port, self.secret, opts)

    @property
    def has_redis(self) -> bool:
        return "GATEWAY_REDIS_URL" in self.env

    def _child(self, exits: contextlib.ExitStack, role: str, argv: list[str]) -> ChildProcess:
        log = self._tmp / f"{role}.log"
        self.procs[role] = exits.enter_context(ChildProcess(role, argv, log, REPO_ROOT, self.env))
        return self.procs[role]

    def direct(self, shape: Shape) -> Target:
        return Target(HOST, self.upstream_port, CHAT_PATH, bearer="x", headers=shape.upstream_headers)

    @contextlib.contextmanager
    def gateway(self, workers: int) -> Iterator[Gateway]:
        """A gateway with ``workers`` workers, healthy, stopped when the block ends."""
        port = free_port()
        args = ["serve", "--host", HOST, "--port", str(port), "--routes", str(self.routes)]
        args += ["--budgets", str(self.budgets), "--workers", str(workers)]
        log = self._tmp / f"gateway-w{workers}.log"
        argv = python_module(self.opts.gateway_module, *args)
        with ChildProcess("gateway", argv, log, REPO_ROOT, self.env) as proc:
            proc.wait_healthy(port, self.opts.startup_timeout_s)
            self.procs["gateway"] = proc
            try:
                yield Gateway(proc, workers, port, self.secret)
            finally:
                self.procs.pop("gateway", None)


def _start_redis(child: Callable[[str, list[str]], ChildProcess]) -> int:
    """A throwaway redis-server (no persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("the whole pipeline needs redis-server on PATH (or use --no-redis)")
    port = free_port()
    argv = [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
    child("store", argv).wait_until(lambda: redis_ping(port), 10.0)
    return port
