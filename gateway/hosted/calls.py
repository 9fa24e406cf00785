"""One hosted tool call: arguments checked against the tool's ``inputSchema``, claimed under its
idempotency key, run at most once (or, in dry-run, validated and recorded only), bounded in time.

Every failure here is the tool's result, never the loop's crash: the model reads it and goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
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


class WallTimeout(Exception):
    """The loop's ``max_wall_s`` ran out during the call (its outcome is unknown)."""


@dataclass(frozen=True, slots=True)
class Runner:
    servers: Servers
    records: CallRecords
    tenant: str
    dry_run: bool

    async def run(
        self, server: McpServerConfig, tool: ToolInfo, arguments: str, key: str, remaining_s: float
    ) -> CallResult:
        parsed = parse_arguments(arguments)
        if isinstance(parsed, CallResult):
            return parsed
        problem = schema_problem(parsed, tool.input_schema)
        if problem is not None:
            return CallResult(None, items.execution_error(f"arguments rejected, not run: {problem}"))
        if self.dry_run:
            return CallResult(DRY_RUN_OUTPUT)
        digest = hashlib.sha256(orjson.dumps([server.name, tool.name, parsed], option=orjson.OPT_SORT_KEYS))
        record = Record("pending", digest.hexdigest())
        try:
            found = await self.records.claim(self.tenant, key, record)
        except StoreUnavailableError:
            message = "the gateway's store is unreachable: the call was not run (it must run at most once)"
            return CallResult(None, items.protocol_error(503, message))
        if found is not None:
            return replayed(found, record.digest)
        try:
            async with asyncio.timeout(remaining_s):
                result = await self.servers.call_tool(server, tool.name, parsed)
        except TimeoutError:
            raise WallTimeout from None  # left ``pending``: a retry must not run it again
        done = Record("done", record.digest, result.output, result.error)
        try:
            await self.records.finish(self.tenant, key, done)
        except StoreUnavailableError:
            log.error("tool call %s ran but its result was not recorded: the store is unreachable", key)
        return result


def replayed(found: Record, digest: str) -> CallResult:
    """A key claimed before: its recorded result, never a second run."""
    if found.digest != digest:
        message = "this call id was already used with other arguments in this response; not run"
        return CallResult(None, items.execution_error(message))
    if found.state == "done":
        return CallResult(found.output, found.error)
    return CallResult(None, items.protocol_error(409, UNKNOWN))


def parse_arguments(arguments: str) -> dict[str, Any] | CallResult:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return CallResult(None, items.execution_error("arguments are not valid JSON; not run"))
    if not isinstance(value, dict):
        return CallResult(None, items.execution_error("arguments must be a JSON object; not run"))
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
