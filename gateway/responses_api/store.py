"""Stored responses: the contract between the endpoint and where the conversation lives.

The gateway owns stored responses (not the upstream), so a conversation can move between providers
and replicas: each turn is kept in the shared store (Redis when configured, the in-process store
otherwise), per tenant, for a retention TTL. ``previous_response_id`` is rebuilt from the chain of
stored turns, oldest first, for whichever provider serves the next turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

DEFAULT_RETENTION_S = 30 * 86400


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    """``resp_…``, unique across tenants."""
    tenant: str
    created_at: int
    previous_response_id: str | None
    input_items: list[dict[str, Any]]
    """This turn's input items as the client sent them, normalized (each with its ``id``), in order;
    ``instructions`` are not items and are not carried to the next turn (as OpenAI does)."""
    response: dict[str, Any]
    """The Response object as the client received it (``output`` items, ``usage``, ``status`` …)."""
    deployment: str
    """The deployment (routes.yaml ``models:`` key) that served this turn."""
    summary: str | None = None
    """Conversation memory: a summary standing in for every turn up to and including this one."""
    extra: dict[str, Any] = field(default_factory=dict)


class ResponseNotFoundError(LookupError):
    """No such id for this tenant: never stored, another tenant's, deleted or expired."""


class ResponseStore(Protocol):
    async def put(self, stored: StoredResponse, ttl_s: int = DEFAULT_RETENTION_S) -> None: ...

    async def get(self, tenant: str, response_id: str) -> StoredResponse:
        """The stored turn, or ``ResponseNotFoundError``."""
        ...

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Whether something was deleted."""
        ...

    async def chain(self, tenant: str, response_id: str) -> list[StoredResponse]:
        """The turns leading to and including ``response_id``, oldest first (stopping at the newest turn
        that carries a ``summary``); ``ResponseNotFoundError`` if any link is missing."""
        ...
