"""One hosted tool call: arguments checked against the tool's ``inputSchema``, claimed under its
idempotency key, run at most once (or, in dry-run, validated and recorded only), bounded in time.

Every failure here is the tool's result, never the loop's crash: the model reads it and goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson

from gateway.config.model import McpServerConfig
from gateway.hosted import items
from gateway.hosted.backend import CallResult, Servers, ToolInfo
from gateway.hosted.idempotency import UNKNOWN, CallRecords, Record
from gateway.store.base import StoreUnavailableError

log = logging.getLogger("gateway.hosted")

DRY_RUN_OUTPUT = orjson.dumps(
    {"dry_run": True, "valid": True, "note": "not executed (x-gateway-tools: dry-run)"}
).decode()


Audit = Callable[[str, "dict[str, Any] | None", str, float, str], None]
"""``(server__tool, arguments, outcome, duration_s, idempotency key)``: one audit row per call."""


@dataclass(frozen=True, slots=True)
class Runner:
    servers: Servers
    records: CallRecords
    tenant: str
    dry_run: bool
    audit: Audit | None = None

    async def run(
        self, server: McpServerConfig, tool: ToolInfo, arguments: str, key: str, remaining_s: float
    ) -> CallResult:
        started = time.perf_counter()
        parsed = parse_arguments(arguments)
        result = await self._run(server, tool, parsed, key, remaining_s)
        if self.audit is not None:
            args = parsed if isinstance(parsed, dict) else None
            took = time.perf_counter() - started
            self.audit(f"{server.name}__{tool.name}", args, result.outcome, took, key)
        return result

    def refused(self, name: str, arguments: str, outcome: str, key: str) -> None:
        """Audit a call that was not run (not offered, rejected)."""
        if self.audit is not None:
            parsed = parse_arguments(arguments)
            self.audit(name, parsed if isinstance(parsed, dict) else None, outcome, 0.0, key)

    async def _run(
        self,
        server: McpServerConfig,
        tool: ToolInfo,
        parsed: dict[str, Any] | CallResult,
        key: str,
        remaining_s: float,
    ) -> CallResult:
        if isinstance(parsed, CallResult):
            return parsed
        problem = schema_problem(parsed, tool.input_schema)
        if problem is not None:
            message = f"arguments rejected, not run: {problem}"
            return CallResult(None, items.execution_error(message), "invalid_arguments")
        if self.dry_run:
            return CallResult(DRY_RUN_OUTPUT, None, "dry_run")
        record = Record("pending", call_digest(server.name, tool.name, parsed))
        try:
            found = await self.records.claim(self.tenant, key, record)
        except StoreUnavailableError:
            message = "the gateway's store is unreachable: the call was not run (it must run at most once)"
            return CallResult(None, items.protocol_error(503, message), "error")
        if found is not None:
            return replayed(found, record.digest)
        try:
            async with asyncio.timeout(remaining_s):
                result = await self.servers.call_tool(server, tool.name, parsed)
        except TimeoutError:
            # left ``pending``: a retry must not run it again
            message = "the response's max_wall_s ran out during the call; its outcome is unknown"
            return CallResult(None, items.protocol_error(504, message), "timeout", wall=True)
        done = Record("done", record.digest, result.output, result.error)
        try:
            await self.records.finish(self.tenant, key, done)
        except StoreUnavailableError:
            log.error("tool call %s ran but its result was not recorded: the store is unreachable", key)
        return result


def call_digest(server: str, tool: str, arguments: dict[str, Any]) -> str:
    """What a call record is checked against: the same key with other arguments is another call."""
    return hashlib.sha256(orjson.dumps([server, tool, arguments], option=orjson.OPT_SORT_KEYS)).hexdigest()


def replayed(found: Record, digest: str) -> CallResult:
    """A key claimed before: its recorded result, never a second run."""
    if found.digest != digest:
        message = "this call id was already used with other arguments in this response; not run"
        return CallResult(None, items.execution_error(message), "invalid_arguments")
    if found.state == "done":
        return CallResult(found.output, found.error, "replayed")
    return CallResult(None, items.protocol_error(409, UNKNOWN), "unknown")


def parse_arguments(arguments: str) -> dict[str, Any] | CallResult:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        message = "arguments are not valid JSON; not run"
        return CallResult(None, items.execution_error(message), "invalid_arguments")
    if not isinstance(value, dict):
        message = "arguments must be a JSON object; not run"
        return CallResult(None, items.execution_error(message), "invalid_arguments")
    return value


def schema_problem(arguments: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """Why ``arguments`` fail the tool's ``inputSchema`` (the first error, with its path), or None."""
    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    except jsonschema.exceptions.SchemaError as exc:
        return f"the tool's own input schema is invalid ({exc.message})"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where or '(root)'}: {error.message}"[:500]
