"""The stored side of a ``/v1/responses`` turn, as the ingress sees it: recall the chain before
dispatch, remember the turn after a good answer (``gateway/responses_api`` keeps them).

Pure helpers, plus the two awaits on the ``ResponseStore``. A chain replays as provider-neutral input
items (``history_items``), so the next turn may be served by any deployment on any replica.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import BadRequest
from gateway.responses_api.store import (
    ChainTooLongError,
    ResponseNotFoundError,
    ResponseStore,
    history_items,
)


def not_found(response_id: str) -> BadRequest:
    # OpenAI's own answer: 400 (not 404) on the create call, naming the field.
    return BadRequest(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


async def recall(store: ResponseStore | None, tenant: str, previous: str) -> list[dict[str, Any]]:
    """The items that replay the conversation up to ``previous`` (oldest first), or 400."""
    if store is None:
        raise not_found(previous)
    try:
        chain = await store.chain(tenant, previous)
    except ResponseNotFoundError:
        raise not_found(previous) from None
    except ChainTooLongError as err:
        raise BadRequest(str(err), param="previous_response_id") from None
    return history_items(chain)


def normalized_items(items: list[dict[str, Any]], response_id: str) -> list[dict[str, Any]]:
    """This turn's input items as stored and listed by ``input_items``: each with a ``type`` and an
    ``id``, message content as a list of parts (as OpenAI lists them)."""
    suffix = response_id.removeprefix("resp_")
    out = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        normal = {**item, "type": kind}
        if kind == "message":
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                extra: dict[str, Any] = {"annotations": []} if part == "output_text" else {}
                normal["content"] = [{"type": part, "text": content, **extra}]
        if not normal.get("id"):
            prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}.get(
                kind, "item"
            )
            normal["id"] = f"{prefix}_{suffix}_{i}"
        out.append(normal)
    return out
