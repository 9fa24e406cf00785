"""One command for the gateway and every shipped sidecar: ``python -m plugins.launch`` (``make run-plugins``).

Starts each sidecar package in ``plugins/`` that exists (today: ``guard``) as
``python -m plugins.<name> serve`` on loopback, with a generated token, then the gateway with
``routes.plugins.yaml``, and waits until every process answers ``GET /healthz``. Each sidecar gets its
documented port (DESIGN.md: guard 8101, rag 8102, review 8103, tools 8104) unless ``--free-ports``;
its token and URL reach the routes file as ``<NAME>_TOKEN`` and ``<NAME>_URL`` (a ``<NAME>_TOKEN`` already
in the environment is kept, so a hand-run setup can use the same routes file and token).

Ctrl-C or SIGTERM stops the gateway first (so no hook call goes to a sidecar that is gone), then the
sidecars. The children run in their own session: the launcher alone decides that order. When any child
exits on its own, the others are stopped and the launcher exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
# The shipped sidecars and their documented ports, in start order; a name without a package is skipped.
SIDECARS: tuple[tuple[str, int], ...] = (("guard", 8101), ("rag", 8102), ("review", 8103), ("tools", 8104))
DELEGATION_SECRET_ENV = "GATEWAY_DELEGATION_SECRET"
STOP_GRACE_S = 10.0


@dataclass(slots=True)
class Child:
    name: str
    url: str
    proc: subprocess.Popen[bytes]


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def shipped(names: Sequence[tuple[str, int]] = SIDECARS) -> list[tuple[str, int]]:
    """The sidecars present in this checkout (a package with a ``__main__``)."""
    return [(name, port) for name, port in names if _has_main(name)]


def _has_main(name: str) -> bool:
    # find_spec of "plugins.rag.__main__" raises when plugins.rag itself is absent: ask in two steps.
    return importlib.util.find_spec(f"plugins.{name}") is not None and (
        importlib.util.find_spec(f"plugins.{name}.__main__") is not None
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def sidecar_env(
    name: str, port: int, gateway_url: str, data_dir: Path, env: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(what the gateway needs: <NAME>_URL and <NAME>_TOKEN, what the sidecar needs: PLUGIN_* and co.)."""
    upper = name.upper()
    token = env.get(f"{upper}_TOKEN") or secrets.token_urlsafe(32)
    url = f"http://127.0.0.1:{port}"
    for_gateway = {f"{upper}_URL": url, f"{upper}_TOKEN": token}
    for_sidecar = {
        "PLUGIN_TOKEN": token,
        "GATEWAY_URL": gateway_url,
        "PLUGIN_DATA_DIR": str(data_dir / name),
    }
    redis_url = env.get("REDIS_URL") or env.get("GATEWAY_REDIS_URL")
    if redis_url:
        for_sidecar["REDIS_URL"] = redis_url
    return for_gateway, for_sidecar


def wait_healthy(child: Child, deadline: float) -> None:
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}) before it was healthy")
        try:
            with urllib.request.urlopen(child.url + "/healthz", timeout=1) as answer:
                healthy = answer.status == 200
        except (urllib.error.URLError, OSError):
            healthy = False  # not listening yet: poll again until the deadline
        if healthy:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not answer {child.url}/healthz in time")


def stop_all(children: Sequence[Child]) -> None:
    """Stop in reverse start order (the gateway first), each with a grace period, then kill."""
    for child in reversed(children):
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=STOP_GRACE_S)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugins.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "127.0.0.1"), help="gateway host")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8080")), help="gateway"
    )
    parser.add_argument("--routes", default=os.environ.get("GATEWAY_ROUTES", "routes.plugins.yaml"))
    parser.add_argument("--budgets", default=os.environ.get("GATEWAY_BUDGETS", "budgets.yaml"))
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".gateway/plugins"),
        help="each sidecar's PLUGIN_DATA_DIR is in it",
    )
    parser.add_argument(
        "--free-ports", action="store_true", help="sidecars on free ports, not the documented"
    )
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds until all are healthy")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    # The children import this checkout's packages whatever the current directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    gateway_url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    # The gateway makes its own secret when it runs alone; one here also covers workers sharing Redis.
    env.setdefault(DELEGATION_SECRET_ENV, secrets.token_urlsafe(48))

    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    children: list[Child] = []
    try:
        deadline = time.monotonic() + args.startup_timeout
        for name, documented in shipped():
            port = free_port() if args.free_ports else documented
            for_gateway, for_sidecar = sidecar_env(name, port, gateway_url, args.data_dir, env)
            env.update(for_gateway)
            url = for_gateway[f"{name.upper()}_URL"]
            command = [sys.executable, "-m", f"plugins.{name}", "serve", "--host", "127.0.0.1"]
            proc = subprocess.Popen(
                [*command, "--port", str(port)],
                env={**env, **for_sidecar},
                start_new_session=True,
            )
            children.append(Child(name, url, proc))
            print(f"launch: {name} on {url} (pid {proc.pid})", flush=True)
        for child in children:
            wait_healthy(child, deadline)
        serve = ["serve", "--host", args.host, "--port", str(args.port)]
        config = ["--routes", args.routes, "--budgets", args.budgets]
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", *serve, *config],
            env=env,
            start_new_session=True,
        )
        children.append(Child("gateway", gateway_url, gateway))
        print(f"launch: gateway on {gateway_url} (pid {gateway.pid}), routes {args.routes}", flush=True)
        wait_healthy(children[-1], deadline)
        print("launch: ready; Ctrl-C stops everything", flush=True)
        while True:
            for child in children:
                if child.proc.poll() is not None:
                    print(f"launch: {child.name} exited with status {child.proc.returncode}", flush=True)
                    return 1
            time.sleep(0.2)
    except Stop:
        print("launch: stopping", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"launch: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(children)


if __name__ == "__main__":
    raise SystemExit(main())
