"""``python -m plugins.<name> serve [--host 127.0.0.1] [--port N]``, configured by the environment.

Environment (DESIGN.md "Sidecar plugin protocol (v1)"): ``PLUGIN_TOKEN`` (required from the gateway on
every call), ``GATEWAY_URL`` (where delegated calls go), ``PLUGIN_DATA_DIR`` (the plugin's own data),
``REDIS_URL`` (shared state, when the plugin keeps any). A plugin reads its own variables itself.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger("plugins.sdk")


@dataclass(frozen=True, slots=True)
class PluginSettings:
    token: str | None
    gateway_url: str | None
    data_dir: str | None
    redis_url: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PluginSettings:
        env = os.environ if env is None else env
        return cls(
            token=env.get("PLUGIN_TOKEN") or None,
            gateway_url=(env.get("GATEWAY_URL") or "").rstrip("/") or None,
            data_dir=env.get("PLUGIN_DATA_DIR") or None,
            redis_url=env.get("REDIS_URL") or None,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    name: str,
    build: Callable[[PluginSettings], ASGIApp],
    *,
    default_port: int,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse the command line, build the app from the environment and run it until stopped.

    Without ``PLUGIN_TOKEN`` the sidecar only agrees to listen on loopback (where only this machine can
    reach it) and says so; on any other address it refuses to start.
    """
    parser = argparse.ArgumentParser(prog=f"python -m plugins.{name}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help=f"serve the {name} sidecar")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=default_port)
    run.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = PluginSettings.from_env()
    if settings.token is None:
        if not _is_loopback(args.host):
            parser.error(f"PLUGIN_TOKEN is not set: refusing to listen on {args.host} without it")
        log.warning("PLUGIN_TOKEN is not set: serving without a token check (loopback only)")
    uvicorn.run(build(settings), host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0
