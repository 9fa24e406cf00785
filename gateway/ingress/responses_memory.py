"""The stored side of a ``/v1/responses`` turn, as the wire format sees it: the client's error for an
unusable ``previous_response_id`` and this turn's input items as stored and listed. The chain, memory
and the store calls are ``gateway/responses_api`` (``conversation.py``, ``turn.py``)."""

from __future__ import annotations

from typing import Any

from gateway.errors import BadRequest


def not_found(response_id: str) -> BadRequest:
    # OpenAI's own answer: 400 (not 404) on the create call, naming the field.
    return BadRequest(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


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
