"""Gateway processes on loopback sharing one redis-server: how tests prove limits hold across replicas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import free_port

ADMIN_KEY = "admin-secret-for-tests"


class Replica:
    def __init__(
        self,
        routes: Path,
        budgets: Path,
        redis_url: str,
        log: Path,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        """``workers`` > 1 runs uvicorn's supervisor with that many workers behind one port."""
        self.port = free_port()
        env = {
            **os.environ,
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_RELOAD_INTERVAL_S": "0.2",
            **(env or {}),
        }
        cmd = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--port",
            str(self.port),
            "--routes",
            str(routes),
            "--budgets",
            str(budgets),
            "--workers",
            str(workers),
        ]
        self.log = log
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited: {self.log.read_text()[-2000:]}")
            try:
                ready = httpx.get(self.url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False  # not listening yet
            if ready:
                return
            time.sleep(0.05)
        raise RuntimeError(f"replica not ready: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_replicas(n: int, routes: Path, budgets: Path, redis_url: str, logdir: Path) -> list[Replica]:
    replicas = [Replica(routes, budgets, redis_url, logdir / f"replica-{i}.log") for i in range(n)]
    for r in replicas:
        r.wait_ready()
    return replicas
