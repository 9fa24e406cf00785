"""``previous_response_id``, ``store`` and conversation memory for one ``/v1/responses`` turn.

``restore`` turns the stored chain into the input of this turn (history items, then this turn's own),
keeping it within the route's ``memory.max_input_tokens``:

* ``truncation: auto`` drops the oldest turns, whole, until it fits (nothing is charged); without
  ``memory`` the bound is the smallest ``context_window`` of the route's deployments, less
  ``max_output_tokens``;
* otherwise, on a route with ``memory``, the oldest turns are summarized ONCE by the summarizer: the
  summary is stored on the newest summarized turn (``StoredResponse.summary``), and every later turn's
  chain stops there (``walk_chain``), so it is reused, not recomputed. The turns kept verbatim are the
  newest that fit in half the window, so the next summary is due only after the conversation has grown
  by about half a window again: summaries stay few however long the conversation runs.
* without ``memory`` (and ``truncation: disabled``) nothing is cut: an input over a deployment's
  ``context_window`` is 400 ``context_length_exceeded`` from dispatch, as for chat.

The token count and the summarizer call are passed in (``count``, ``summarize``): this module knows the
chain and the policy, not the wire format or the pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import BadRequest, StoreUnavailable
from gateway.responses_api.store import (
    ChainTooLongError,
    ResponseNotFoundError,
    ResponseStore,
    StoredResponse,
    history_items,
    summary_item,
)
from gateway.store.base import StoreUnavailableError

Items = list[dict[str, Any]]
Count = Callable[[Items], int]
Summarize = Callable[[Items], Awaitable[str]]

KEEP_FRACTION = 0.5
"""Of ``max_input_tokens``, what the verbatim turns (and this turn's input) may fill after a summary."""


@dataclass(slots=True)
class Restored:
    items: Items
    """The whole input of this turn: history, then the turn's own items."""
    note: dict[str, object] | None = None
    """What memory did, for the access log (``memory``): summarized or truncated turns."""


def normalized(items: Items, suffix: str) -> Items:
    """This turn's input items as stored and listed by ``input_items``: each with an ``id`` (OpenAI's
    ``msg_…``), messages with a ``status`` and their content as parts."""
    out: Items = []
    for i, raw in enumerate(items):
        item = dict(raw)
        kind = item.setdefault("type", "message")
        if kind == "message":
            item.setdefault("status", "completed")
            if isinstance(item.get("content"), str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                extra: dict[str, Any] = {"annotations": []} if part == "output_text" else {}
                item["content"] = [{"type": part, "text": item["content"], **extra}]
        item.setdefault("id", f"{'msg' if kind == 'message' else 'item'}_{suffix}{i:04x}")
        out.append(item)
    return out


def unknown(previous_id: str) -> BadRequest:
    return BadRequest(
        f"Previous response with id '{previous_id[:200]}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


async def load_chain(store: ResponseStore, tenant: str, previous_id: str) -> list[StoredResponse]:
    """The chain, or the client's error: 400 ``previous_response_not_found`` for another tenant's,
    a deleted, an expired (or any broken) link; 503 when the store is down."""
    try:
        return await store.chain(tenant, previous_id)
    except ResponseNotFoundError:
        raise unknown(previous_id) from None
    except ChainTooLongError as exc:
        raise BadRequest(str(exc), param="previous_response_id") from None
    except StoreUnavailableError as exc:
        raise StoreUnavailable("The gateway's store is unreachable; try again shortly.") from exc


async def restore(
    store: ResponseStore,
    chain: list[StoredResponse],
    own: Items,
    *,
    window: int | None,
    truncation: str,
    count: Count,
    summarize: Summarize | None,
    ttl_s: int,
) -> Restored:
    """This turn's whole input within ``window`` tokens (None: no bound): ``truncation: auto`` drops the
    oldest turns; else ``summarize`` (the route's memory) replaces them; else it goes as it is."""
    history = history_items(chain)
    if window is None or count(history + own) <= window:
        return Restored(history + own)
    if truncation == "auto":
        # Oldest turns out, whole (a function_call never loses its output), until it fits.
        for start in range(1, len(chain) + 1):
            kept = history_items(chain[start:]) + own
            if count(kept) <= window or start == len(chain):
                return Restored(kept, {"truncated_turns": start})
    if summarize is None:
        return Restored(history + own)  # dispatch answers 400 context_length_exceeded, as for chat
    # Keep the newest turns that fit in part of the window; summarize the rest (at least one turn).
    budget = int(window * KEEP_FRACTION)
    split = len(chain)
    for start in range(1, len(chain)):
        if count(history_items(chain[start:]) + own) <= budget:
            split = start
            break
    older, kept_turns = chain[:split], chain[split:]
    summary = await summarize(history_items(older))
    newest = older[-1]
    try:
        await store.put(dataclasses.replace(newest, summary=summary), ttl_s)
    except StoreUnavailableError as exc:
        raise StoreUnavailable("The gateway's store is unreachable; try again shortly.") from exc
    items = [summary_item(summary), *history_items(kept_turns), *own]
    return Restored(items, {"summarized_turns": len(older), "summary_on": newest.id})
