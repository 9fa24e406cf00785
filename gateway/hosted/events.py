"""The hosted loop's output: items as they are made and, when streaming, OpenAI's events for them.

``Output`` is the one place items enter the response; each method returns the SSE frames to send
(none when not streaming), so the loop reads the same either way. Event names and fields follow
OpenAI's Responses streaming events: ``response.mcp_list_tools.in_progress|completed|failed``,
``response.mcp_call_arguments.delta|done``, ``response.mcp_call.in_progress|completed|failed``,
``response.output_item.added|done``, the ``output_text`` events for a message, and one final
``response.completed``, ``response.incomplete`` or ``response.failed`` carrying the whole Response.
A model step's text arrives as one ``output_text.delta`` once that step answered (each model step is
a whole, priced request of its own).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.ingress.responses import Echo, envelope, message_item

Frames = list[bytes]


class Output:
    def __init__(self, response_id: str, created_at: int, echo: Echo, *, stream: bool) -> None:
        self.response_id = response_id
        self._created_at = created_at
        self._echo = echo
        self._stream = stream
        self._seq = 0
        self.items: list[dict[str, Any]] = []

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: %b\ndata: %b\n\n" % (kind.encode(), orjson.dumps(payload))

    def response(
        self,
        status: str,
        usage: dict[str, Any] | None = None,
        incomplete: dict[str, str] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return envelope(
            self.response_id,
            self._created_at,
            self._echo,
            status=status,
            output=list(self.items),
            usage=usage,
            incomplete=incomplete,
            error=error,
        )

    def start(self) -> Frames:
        if not self._stream:
            return []
        snapshot = {**self.response("in_progress"), "output": []}
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _add(self, item: dict[str, Any]) -> tuple[int, Frames]:
        index = len(self.items)
        self.items.append(item)
        return index, []

    # -- mcp_list_tools ---------------------------------------------------------------------------------
    def list_started(self, item: dict[str, Any]) -> tuple[int, Frames]:
        index, _ = self._add(item)
        if not self._stream:
            return index, []
        added = {**item, "tools": []}
        return index, [
            self._event("response.output_item.added", output_index=index, item=added),
            self._event("response.mcp_list_tools.in_progress", item_id=item["id"], output_index=index),
        ]

    def list_done(self, index: int, item: dict[str, Any]) -> Frames:
        self.items[index] = item
        if not self._stream:
            return []
        kind = "failed" if item.get("error") else "completed"
        return [
            self._event(f"response.mcp_list_tools.{kind}", item_id=item["id"], output_index=index),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    # -- mcp_call -----------------------------------------------------------------------------------------
    def call_started(self, item: dict[str, Any]) -> tuple[int, Frames]:
        index, _ = self._add(item)
        if not self._stream:
            return index, []
        item_id, arguments = item["id"], item["arguments"]
        added = {**item, "arguments": "", "status": "in_progress"}
        return index, [
            self._event("response.output_item.added", output_index=index, item=added),
            self._event(
                "response.mcp_call_arguments.delta", item_id=item_id, output_index=index, delta=arguments
            ),
            self._event(
                "response.mcp_call_arguments.done", item_id=item_id, output_index=index, arguments=arguments
            ),
            self._event("response.mcp_call.in_progress", item_id=item_id, output_index=index),
        ]

    def call_done(self, index: int, item: dict[str, Any]) -> Frames:
        self.items[index] = item
        if not self._stream:
            return []
        kind = "failed" if item.get("error") else "completed"
        return [
            self._event(f"response.mcp_call.{kind}", item_id=item["id"], output_index=index),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    # -- whole items: an approval request, a client's function call ---------------------------------------
    def whole(self, item: dict[str, Any]) -> Frames:
        index, _ = self._add(item)
        if not self._stream:
            return []
        frames = [self._event("response.output_item.added", output_index=index, item=item)]
        if item["type"] == "function_call":
            frames.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            )
        frames.append(self._event("response.output_item.done", output_index=index, item=item))
        return frames

    def message(self, item_id: str, text: str, status: str) -> Frames:
        item = message_item(item_id, text, status)
        index, _ = self._add(item)
        if not self._stream:
            return []
        part = item["content"][0]
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        return [
            self._event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            ),
            self._event("response.content_part.added", **where, part={**part, "text": ""}),
            self._event("response.output_text.delta", **where, delta=text, logprobs=[]),
            self._event("response.output_text.done", **where, text=text, logprobs=[]),
            self._event("response.content_part.done", **where, part=part),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    # -- the end ----------------------------------------------------------------------------------------
    def end(self, final: dict[str, Any]) -> Frames:
        if not self._stream:
            return []
        status = final["status"]
        if status == "failed":
            error = final.get("error") or {}
            return [
                self._event("error", code=error.get("code"), message=error.get("message"), param=None),
                self._event("response.failed", response=final),
            ]
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [self._event(kind, response=final)]
