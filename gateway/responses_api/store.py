"""Stored responses: the contract between the endpoint and where the conversation lives.

The gateway owns stored responses (not the upstream), so a conversation can move between providers
and replicas: each turn is kept in the shared store (Redis when configured, the in-process store
otherwise), per tenant, for a retention TTL. ``previous_response_id`` is rebuilt from the chain of
stored turns, oldest first, for whichever provider serves the next turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

DEFAULT_RETENTION_S = 30 * 86400
MAX_CHAIN = 1000
"""The longest chain ``previous_response_id`` may walk: a bound on the store round trips of one turn
(and a guard against a cycle, which ids minted by the gateway cannot form, but a bug could)."""


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


class ChainTooLongError(ValueError):
    """A chain longer than ``MAX_CHAIN`` turns (a client error: 400 on ``previous_response_id``)."""


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


async def walk_chain(
    get: Callable[[str, str], Awaitable[StoredResponse]],
    tenant: str,
    response_id: str,
    max_len: int = MAX_CHAIN,
) -> list[StoredResponse]:
    """``ResponseStore.chain`` over a store's ``get``: follow ``previous_response_id`` from the newest
    turn back until a turn without one, or one carrying a ``summary`` (it stands in for everything
    before it); oldest first. ``ResponseNotFoundError`` for any missing link (a turn whose predecessor
    expired or was deleted cannot be rebuilt faithfully), ``ChainTooLongError`` past ``max_len``."""
    turns: list[StoredResponse] = []
    next_id: str | None = response_id
    while next_id is not None:
        if len(turns) >= max_len:
            raise ChainTooLongError(f"the conversation is longer than {max_len} turns")
        turn = await get(tenant, next_id)
        turns.append(turn)
        if turn.summary is not None:
            break
        next_id = turn.previous_response_id
    turns.reverse()
    return turns


def history_items(chain: list[StoredResponse]) -> list[dict[str, Any]]:
    """The input items that replay ``chain`` (oldest first) ahead of the next turn's own input: for
    each turn its input items, then its output items (messages, ``function_call`` items with their
    ``call_id``, so a ``function_call_output`` in the next turn matches; reasoning items are dropped, they
    only mean something to the model that made them). When the oldest turn carries a ``summary`` it
    stands in for that turn and everything before it: one developer message holding the summary.
    Items are provider-neutral, so the next turn may be served by any deployment."""
    items: list[dict[str, Any]] = []
    for i, turn in enumerate(chain):
        if i == 0 and turn.summary is not None:
            items.append(summary_item(turn.summary))
            continue
        items.extend(turn.input_items)
        items.extend(o for o in turn.response.get("output") or () if o.get("type") != "reasoning")
    return items


SUMMARY_PREFIX = "Summary of the earlier conversation:\n"


def summary_item(summary: str) -> dict[str, Any]:
    """The input item a stored summary becomes in the next turn's input."""
    return {
        "type": "message",
        "role": "developer",
        "content": [{"type": "input_text", "text": SUMMARY_PREFIX + summary}],
    }
