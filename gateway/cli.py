"""``python -m gateway serve | check | explain | keys new``."""

from __future__ import annotations

import argparse
import glob
import hashlib
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from dataclasses import replace
from types import FrameType
from typing import Any

import yaml

from gateway import logs
from gateway.config.parse import ConfigError, check
from gateway.settings import (
    LEDGER_URL_ENV,
    LIMIT_ENV,
    STATE_FILE_ENV,
    Settings,
    default_state_file,
    ledger_url,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway", description="An OpenAI-compatible LLM gateway."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument(
        "--admin-port",
        type=int,
        help="serve /admin/* and /metrics on this port only (env GATEWAY_ADMIN_PORT; default: the main port)",
    )
    serve.add_argument(
        "--admin-host", help="the admin listener's address (env GATEWAY_ADMIN_HOST; 127.0.0.1)"
    )
    _config_args(serve)
    serve.add_argument(
        "--state-file",
        help="without Redis: the file that keeps spend and run-time keys across restarts; '' = memory "
        "only (env GATEWAY_STATE_FILE; default .gateway/state.sqlite3 beside budgets.yaml)",
    )
    serve.add_argument("--log-level", default=os.environ.get("GATEWAY_LOG_LEVEL", "info"))
    for name, (var, kind) in LIMIT_ENV.items():  # the connection limits (gateway/limits.py)
        flag = "--" + name.replace("_", "-")
        serve.add_argument(flag, type=kind, help=f"env {var}; default {getattr(Settings(), name)}")

    chk = sub.add_parser("check", help="validate routes.yaml and budgets.yaml")
    _config_args(chk)

    exp = sub.add_parser("explain", help="show the route and ordered plan for a request")
    _config_args(exp)
    exp.add_argument("--model", required=True)
    exp.add_argument("--task")
    exp.add_argument("--key-id")

    keys = sub.add_parser("keys", help="key management")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="issue a new secret and print the YAML to paste")
    new.add_argument("--tenant", required=True)
    new.add_argument("--id", required=True)
    new.add_argument("--role", default="user", choices=["user", "admin", "reviewer"])
    new.add_argument("--budgets", help="budgets.yaml to check the tenant against (env GATEWAY_BUDGETS)")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check":
        return _check(_settings(args))
    if args.command == "explain":
        return _explain(_settings(args), args.model, args.task, args.key_id)
    return _keys_new(args.tenant, args.id, args.role, _settings(args).budgets_path)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--routes", help="routes.yaml path (env GATEWAY_ROUTES)")
    p.add_argument("--budgets", help="budgets.yaml path (env GATEWAY_BUDGETS)")


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings.from_env()
    if getattr(args, "routes", None):
        s = replace(s, routes_path=args.routes)
    if args.budgets:
        s = replace(s, budgets_path=args.budgets)
        if STATE_FILE_ENV not in os.environ:
            s = replace(s, state_file=default_state_file(args.budgets))
        if LEDGER_URL_ENV not in os.environ:  # the default ledger sits beside the budgets.yaml in use
            s = replace(s, ledger_url=ledger_url(None, args.budgets, s.redis_url))
    state_file = getattr(args, "state_file", None)
    if state_file is not None:
        s = replace(s, state_file=state_file or None)
    for name in ("host", "port", "workers", "admin_port", "admin_host", *LIMIT_ENV):
        value = getattr(args, name, None)
        if value is not None:
            s = replace(s, **{name: value})
    return s


def _check(settings: Settings) -> int:
    errors, warnings = check(settings.routes_path, settings.budgets_path)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in errors:
        print(line)
    if errors:
        return 1
    print(f"ok: {settings.routes_path} and {settings.budgets_path} are valid")
    return 0


def _explain(settings: Settings, model: str, task: str | None, key_id: str | None) -> int:
    from gateway.explain import explain, refused
    from gateway.pipeline.auth import Principal
    from gateway.reload import load

    try:
        routes, budgets = load(settings.routes_path, settings.budgets_path)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    principal = None
    if key_id is not None:
        found = [(t, k) for t in budgets.tenants.values() for k in t.keys if k.id == key_id]
        if not found:
            print(f"unknown key id {key_id!r}", file=sys.stderr)
            return 1
        tenant, key = found[0]
        principal = Principal(
            tenant=tenant.name, key_id=key.id, role=key.role, models=tenant.models, key_models=key.models
        )
    lines = explain(routes, model, task, principal)
    print("\n".join(lines))
    return 1 if refused(lines) else 0  # scripts can tell a plan the gateway would refuse


def _keys_new(tenant: str, key_id: str, role: str, budgets_path: str) -> int:
    if (problem := _unknown_tenant(tenant, budgets_path)) is not None:
        print(f"warning: {problem}", file=sys.stderr)
    secret = "sk-gw-" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    print(f"secret: {secret}")
    print(f"# paste under tenants.{tenant}.keys in budgets.yaml; the secret is not stored anywhere")
    print(f"      - id: {key_id}")
    print(f'        sha256: "{digest}"')
    print(f"        role: {role}")
    return 0


def _unknown_tenant(tenant: str, budgets_path: str) -> str | None:
    """Why the key would not work as printed (its tenant is not in budgets.yaml), or None. A warning
    only: the tenant may be added in the same edit as the key."""
    try:
        with open(budgets_path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        return f"cannot read {budgets_path} to check tenant {tenant!r}: {exc}"
    tenants = data.get("tenants") if isinstance(data, dict) else None
    if not isinstance(tenants, dict) or tenant not in tenants:
        return (
            f"tenant {tenant!r} is not in {budgets_path}: add it under tenants: too, "
            "or the key is refused (401)"
        )
    return None


def _exit_after_graceful_shutdown(signum: int, frame: FrameType | None) -> None:
    """Exit 0 on the SIGTERM uvicorn re-raises once its graceful shutdown is done.

    uvicorn handles SIGTERM itself (stop accepting, finish in-flight requests and streams, lifespan
    shutdown), then restores the handler it found and raises the signal again; with the default
    handler the process would die by the signal (exit -15) although it shut down cleanly.
    """
    raise SystemExit(0)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.limits import raise_open_files_limit
    from gateway.server import GatewayHttpProtocol

    settings = _settings(args)
    if settings.workers > 1 and not settings.redis_url:
        print(
            "error: --workers > 1 needs GATEWAY_REDIS_URL: without Redis each worker would keep its own "
            "limits and budgets, so they would multiply by the number of workers.",
            file=sys.stderr,
        )
        return 2
    from gateway.store.topology import parse_url

    for name, url in (
        ("GATEWAY_REDIS_URL", settings.redis_url),
        ("GATEWAY_CACHE_REDIS_URL", settings.cache_redis_url),
    ):
        try:
            if url:
                parse_url(url)
        except ValueError as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            return 2
    errors, _ = check(settings.routes_path, settings.budgets_path)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    from gateway import delegation

    try:
        delegation.parse_secrets(settings.delegation_secret)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = _state_file_problem(settings) or _admin_problem(settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    os.environ.update(settings.to_env())
    # Every connection is a file descriptor; a soft limit of 1024 would cap the gateway far below
    # max_connections. The workers inherit the raised limit.
    before, after = raise_open_files_limit()
    created_dir = _prepare_multiprocess_metrics(settings.workers)
    os.environ[logs.LEVEL_ENV] = args.log_level  # for the worker processes, which configure their own
    logs.configure(args.log_level)
    if after != before:
        logging.getLogger("gateway").info("open files limit raised from %d to %d", before, after)
    signal.signal(signal.SIGTERM, _exit_after_graceful_shutdown)
    options: dict[str, Any] = dict(
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers if settings.workers > 1 else None,
        loop="uvloop",
        http=GatewayHttpProtocol,
        proxy_headers=False,  # nothing reads the client address; one ASGI layer less per request
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
    )
    try:
        if settings.admin_port is None:
            uvicorn.run("gateway.app:app_from_env", **options)
        else:
            return _run_with_admin(settings, options)
    finally:
        if created_dir is not None:
            # Ours alone, and nothing reads it once the workers are gone.
            shutil.rmtree(created_dir, ignore_errors=True)
    return 0


def _admin_problem(settings: Settings) -> str | None:
    if settings.admin_port is not None and settings.admin_port == settings.port:
        return "GATEWAY_ADMIN_PORT must differ from the main port"
    return None


def _run_with_admin(settings: Settings, options: dict[str, Any]) -> int:
    """``uvicorn.run`` with a second listening socket (the admin port) for the server or each worker.

    uvicorn binds one socket itself; it serves a list of them when given one, so both are bound here
    and handed over, as ``uvicorn.run`` does with its own.
    """
    import inspect

    from uvicorn import Config, Server
    from uvicorn.supervisors.multiprocess import Multiprocess

    from gateway.listeners import bind

    config = Config("gateway.app:app_from_env", **options)
    sockets = [config.bind_socket(), bind(settings.admin_host, settings.admin_port or 0)]
    logging.getLogger("gateway").info(
        "admin listener (/admin/*, /metrics) on http://%s:%d", settings.admin_host, settings.admin_port
    )
    server = Server(config)
    if config.workers > 1:
        # uvicorn 0.55 dropped the ``target`` argument its 0.54 supervisor requires
        if "target" in inspect.signature(Multiprocess.__init__).parameters:
            Multiprocess(config, target=server.run, sockets=sockets).run()  # type: ignore[call-arg]
        else:
            Multiprocess(config, sockets=sockets).run()
    else:
        server.run(sockets=sockets)
        if not server.started:
            return 3  # uvicorn's STARTUP_FAILURE
    return 0


def _state_file_problem(settings: Settings) -> str | None:
    """Why the state file cannot be used, said before uvicorn starts (a failing lifespan prints a
    traceback); the app opens it again for real, so a file taken in between still fails there."""
    if settings.redis_url or not settings.state_file:
        return None
    from gateway.store.durable import StateFile, StateFileError
    from gateway.store.memory import MemoryStore

    try:
        StateFile.open(settings.state_file, MemoryStore()).release()
    except StateFileError as exc:
        return str(exc)
    return None


def _prepare_multiprocess_metrics(workers: int) -> str | None:
    """Switch prometheus-client to multiprocess mode for the workers; return the dir if we made it.

    prometheus-client picks its value class (in-memory or mmap file) once, when it is first imported,
    from ``PROMETHEUS_MULTIPROC_DIR``. uvicorn starts workers as fresh ``spawn`` processes that inherit
    this environment and import everything anew, so setting the variable here, before ``uvicorn.run``,
    reaches every worker. With one worker nothing changes unless the user set the variable. A leftover
    file from an earlier run would be summed into this one's totals, so the directory starts empty.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if workers <= 1 and not path:
        return None
    created = None
    if not path:
        path = created = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return created
