"""uvicorn's httptools protocol, with the writes of one event-loop turn sent together.

uvicorn writes a response's status line and headers, then its body, as two ``send()`` calls; an SSE
stream is a call per frame. On loopback and in containers a send is a syscall that also wakes the
peer, a measurable share of the gateway's CPU per request. ``CoalescingTransport`` sends a
response's head together with the first part of its body, at once, and gathers what else is written
in the same turn of the event loop into one send at the end of that turn (``call_soon``): a JSON
answer leaves in one send, a stream's first frame leaves with the head without delay, and frames that
arrive together leave together. Nothing waits longer than the current turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Wraps an asyncio transport; ``write`` coalesces (see ``write``), everything else delegates."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self._inner = inner
        self._parts: list[bytes] = []
        self._scheduled = False
        self._sent_this_turn = False
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``. The second write of a turn sends what is queued at once (a response's head
        and its body, or its first SSE frame, leave together and without delay); later writes of the
        same turn wait for its end and leave together."""
        if not data:
            return
        self._parts.append(bytes(data))
        if not self._sent_this_turn and len(self._parts) >= 2:
            self._send()
            self._sent_this_turn = True
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._end_of_turn)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _end_of_turn(self) -> None:
        self._scheduled = False
        self._sent_this_turn = False
        self._send()

    def _send(self) -> None:
        if not self._parts:
            return
        parts, self._parts = self._parts, []
        if not self._inner.is_closing():
            self._inner.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        self._send()  # what was written before close() still goes out, as with a plain transport
        self._inner.close()

    def abort(self) -> None:
        self._parts.clear()
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(len(p) for p in self._parts)

    def __getattr__(self, name: str) -> Any:  # get_extra_info, pause_reading, set_protocol, ...
        return getattr(self._inner, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """``uvicorn.run(..., http=GatewayHttpProtocol)``: httptools, with coalesced writes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]
