"""A chat-completions stream as OpenAI's Responses event sequence: a pure per-chunk translator.

``feed(chunk)`` takes one chat chunk (a dict) and returns the SSE frames it becomes; ``finish()`` closes
what is open and ends with ``response.completed`` (or ``response.incomplete``); ``fail()`` ends a stream
that broke after its first event with ``error`` then ``response.failed``, never a silent cut. State is
explicit on the object, and every event carries the next ``sequence_number``.

Items are emitted one after the other, as OpenAI does: a text message item first (when there is text),
then one ``function_call`` item per tool call; a new item closes the one before it.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.ingress.extra import plugin_extra
from gateway.ingress.responses import Echo, call_item, envelope, message_item, status_of, usage_of


class _Call:
    __slots__ = ("arguments", "call_id", "item_id", "name", "output_index")

    def __init__(self, output_index: int, item_id: str, call_id: str, name: str) -> None:
        self.output_index = output_index
        self.item_id = item_id
        self.call_id = call_id
        self.name = name
        self.arguments = ""


class StreamTranslator:
    def __init__(self, *, response_id: str, created_at: int, echo: Echo) -> None:
        self.response_id = response_id
        self._suffix = response_id.removeprefix("resp_")
        self._created_at = created_at
        self._echo = echo
        self._seq = 0
        self.started = False
        self._output: list[dict[str, Any]] = []
        self._text: str | None = None  # the open message item's text, None when none is open
        self._text_index = -1
        self._calls: dict[int, _Call] = {}
        self._open_call: _Call | None = None
        self._finish: object = None
        self._usage: dict[str, Any] | None = None
        self._extra: dict[str, Any] | None = None  # plugins' x_gateway, for the final Response
        self.final: dict[str, Any] | None = None
        """The Response object the stream ended with (``finish``), for whoever stores it."""

    # ----------------------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: %b\ndata: %b\n\n" % (kind.encode(), orjson.dumps(payload))

    def _snapshot(self, status: str, **kw: Any) -> dict[str, Any]:
        return envelope(
            self.response_id, self._created_at, self._echo, status=status, output=[], usage=None, **kw
        )

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        return [
            self._event("response.created", response=self._snapshot("in_progress")),
            self._event("response.in_progress", response=self._snapshot("in_progress")),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out = self._start()
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage_of(usage)
        if "x_gateway" in chunk and (extra := plugin_extra(chunk["x_gateway"])) is not None:
            self._extra = {**(self._extra or {}), **extra}
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return out
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._text_delta(text)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                if isinstance(call, dict):
                    out += self._call_delta(call)
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
        return out

    def _text_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        item_id = f"msg_{self._suffix}"
        if self._text is None:
            out += self._close_call()
            self._text = ""
            self._text_index = len(self._output)
            self._output.append(message_item(item_id, "", "in_progress"))
            item = {**message_item(item_id, "", "in_progress"), "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(self._event("response.output_item.added", output_index=self._text_index, item=item))
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item_id,
                    output_index=self._text_index,
                    content_index=0,
                    part=part,
                )
            )
        self._text += text
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=self._text_index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _close_text(self, status: str) -> list[bytes]:
        if self._text is None:
            return []
        text, self._text = self._text, None
        item_id = f"msg_{self._suffix}"
        index = self._text_index
        item = message_item(item_id, text, status)
        self._output[index] = item
        return [
            self._event(
                "response.output_text.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self._event(
                "response.content_part.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=item["content"][0],
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _call_delta(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        index = index if type(index) is int else 0
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        known = self._calls.get(index)
        if known is None:
            out += self._close_text("completed")
            out += self._close_call()
            call_id = call.get("id")
            known = _Call(
                len(self._output),
                f"fc_{self._suffix}_{index}",
                call_id if isinstance(call_id, str) and call_id else f"call_{self._suffix}_{index}",
                str(function.get("name") or ""),
            )
            self._calls[index] = known
            self._open_call = known
            item = call_item(known.item_id, known.call_id, known.name, "", "in_progress")
            self._output.append(item)
            out.append(self._event("response.output_item.added", output_index=known.output_index, item=item))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            known.arguments += arguments
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=known.item_id,
                    output_index=known.output_index,
                    delta=arguments,
                )
            )
        return out

    def _close_call(self) -> list[bytes]:
        call, self._open_call = self._open_call, None
        if call is None:
            return []
        item = call_item(call.item_id, call.call_id, call.name, call.arguments, "completed")
        self._output[call.output_index] = item
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=call.item_id,
                output_index=call.output_index,
                arguments=call.arguments,
            ),
            self._event("response.output_item.done", output_index=call.output_index, item=item),
        ]

    def finish(self) -> list[bytes]:
        out = self._start()
        status, incomplete = status_of(self._finish)
        out += self._close_text(status)
        out += self._close_call()
        final = envelope(
            self.response_id,
            self._created_at,
            self._echo,
            status=status,
            output=list(self._output),
            usage=self._usage,
            incomplete=incomplete,
        )
        if self._extra:
            final["x_gateway"] = self._extra
        self.final = final
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(kind, response=final))
        return out

    def fail(self, message: str, code: str | None) -> bytes:
        """``error`` and ``response.failed``: the end of a stream that broke after it started."""
        frames = self._start()
        # Response.error.code is a closed set in the SDK's types; the event's code says the rest.
        kind = code if code == "rate_limit_exceeded" else "server_error"
        error = {"code": kind, "message": message}
        frames.append(self._event("error", code=code, message=message, param=None))
        failed = envelope(
            self.response_id,
            self._created_at,
            self._echo,
            status="failed",
            output=list(self._output),
            usage=self._usage,
            error=error,
        )
        frames.append(self._event("response.failed", response=failed))
        return b"".join(frames)
