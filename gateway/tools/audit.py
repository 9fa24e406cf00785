"""Every tool call, allowed or not, as one audit row (the ledger's ``audit`` table, kind ``tool``) and one
JSON line on the ``gateway.audit`` logger.

The row says who (tenant, key id, role), which tool, a sha256 digest of the arguments, how it went and how
long it took, with the request id that ties it to the rest of the request's records. Never the arguments
themselves (they may hold anything a user typed) and never a result: the digest lets an investigation
match a call against arguments it already has.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.context import new_request_id
from gateway.ledger import Ledger
from gateway.pipeline.auth import Principal

audit_log = logging.getLogger("gateway.audit")

STATUS = {
    "ok": 200,
    "tool_error": 200,  # the tool ran and answered; that its answer is an error is the tool's business
    "dry_run": 202,
    "error": 502,
    "cancelled": 499,  # the caller left while the call ran: it may have run
    "unreachable": 502,
    "timeout": 504,
    "unknown_tool": 404,
    "tool_not_allowed": 403,
    "role_not_allowed": 403,
    "approval_required": 403,
    "invalid_arguments": 400,
    "rejected": 403,  # the hosted loop: the client or a reviewer turned the call down; it did not run
    "replayed": 200,  # the hosted loop: a retry got the recorded result of the one run (idempotency key)
    "unknown": 409,  # the hosted loop: the key was claimed by a run whose outcome is unknown; not re-run
}
"""The audit row's ``status`` for each outcome (an HTTP-like code, as admin rows have)."""


def digest(arguments: Mapping[str, Any] | None) -> str:
    """sha256 of the arguments as canonical JSON (sorted keys), so equal arguments give equal digests
    whatever order a client wrote them in."""
    canonical = orjson.dumps(dict(arguments or {}), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def record(
    ledger: Ledger | None,
    *,
    request_id: str,
    principal: Principal,
    tool: str,
    arguments: Mapping[str, Any] | None,
    outcome: str,
    duration_s: float,
    via: str,
    call_id: str | None = None,
) -> dict[str, Any]:
    """Write the audit line and queue the audit row (when the ledger is on); returns the row.

    ``via``: where the call came from (``mcp`` for ``/mcp``, ``responses`` for the hosted loop);
    ``call_id``: the loop's call id (its idempotency key is response id + call id).
    """
    target: dict[str, Any] = {
        "tool": tool,
        "arguments_sha256": digest(arguments),
        "outcome": outcome,
        "duration_ms": round(duration_s * 1000, 3),
        "via": via,
    }
    if call_id is not None:
        target["call_id"] = call_id
    if principal.parent_request_id is not None:  # a delegated call: the request that handed the token out
        target["parent_request_id"] = principal.parent_request_id
    now = time.time()
    row = {
        "id": new_request_id(),
        "request_id": request_id,
        "ts": now,
        "kind": "tool",
        "action": "tool_call",
        "who": f"{principal.tenant}/{principal.key_id}",
        "role": principal.role,
        "tenant": principal.tenant,
        "target": orjson.dumps(target).decode(),
        "status": STATUS.get(outcome, 500),
    }
    audit_log.info(
        orjson.dumps(
            {"audit": "tool_call", **{k: row[k] for k in ("who", "role", "request_id", "status")}, **target}
        ).decode()
    )
    if ledger is not None:
        ledger.audit(row)
    return row
