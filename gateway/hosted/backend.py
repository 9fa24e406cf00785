"""What the hosted loop needs from the MCP side, as small types: the tools a server offers, the result
of one call, a model step's result. ``gateway/tools`` (the MCP client and the tool policy) provides them;
the loop is tested through these and nothing else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from gateway.config.model import McpServerConfig
from gateway.errors import GatewayError
from gateway.hosted.idempotency import CallRecords
from gateway.hosted.spec import HostedTool


@dataclass(frozen=True, slots=True)
class ToolInfo:
    name: str
    description: str | None
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None = None

    def listed(self) -> dict[str, Any]:
        """As an ``mcp_list_tools`` item lists it."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
            "annotations": self.annotations,
        }


@dataclass(frozen=True, slots=True)
class CallResult:
    output: str | None
    error: dict[str, Any] | None = None
    """An ``mcp_call`` item's ``error`` (``items.execution_error`` / ``items.protocol_error``)."""
    outcome: str = "ok"
    """For the audit row (``gateway.tools.audit.STATUS``): ``ok``, ``tool_error``, ``timeout`` …"""
    wall: bool = False
    """Cut by the loop's ``max_wall_s`` (the loop then ends ``incomplete``)."""


class Servers(Protocol):
    async def list_tools(self, server: McpServerConfig) -> list[ToolInfo]:
        """The server's tools within its configured ``allowed_tools``; raises on failure."""
        ...

    async def call_tool(self, server: McpServerConfig, tool: str, arguments: dict[str, Any]) -> CallResult:
        """One call, bounded in time and result size; a failure is a ``CallResult`` with ``error``."""
        ...


@dataclass(slots=True)
class StepResult:
    answer: dict[str, Any] | None
    """The chat completion, or None when the step failed (``error``)."""
    cost: Decimal
    error: GatewayError | None = None


@dataclass(frozen=True, slots=True)
class HostedTools:
    """What outlives requests: the MCP clients and where call records are kept."""

    servers: Servers
    records: CallRecords


@dataclass(frozen=True, slots=True)
class Limits:
    max_tool_calls: int
    max_wall_s: float
    max_cost_nano: int | None


@dataclass(frozen=True, slots=True)
class Approved:
    """An ``mcp_approval_response`` of this turn, matched to the request it answers."""

    key: str
    """The idempotency key: the id of the response that asked, and the request's id."""
    request: dict[str, Any]
    approve: bool


@dataclass(frozen=True, slots=True)
class Listing:
    hosted: HostedTool
    server: McpServerConfig
    shown: bool
    """An earlier turn of the conversation listed it: no new ``mcp_list_tools`` item (as OpenAI does)."""


Step = Callable[[dict[str, Any], float], Awaitable[StepResult]]
"""One model step: a chat body and the loop's wall-time deadline (monotonic; it caps the route's
``timeout_s``) in, the answer (admitted, priced and settled) out."""
Estimate = Callable[[dict[str, Any]], int]
"""A chat body's worst-case cost in nano-USD, as admission would reserve it."""
Review = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | str]]
"""The ``tool`` hook (``approver: reviewer``): the call ``{id, name, arguments}`` as approved (maybe
edited), or the rejection's reason."""
