"""Server-sent events: an incremental parser and the frame encoders.

The parser is fed raw byte chunks as they arrive and returns the complete events, keeping any
partial event for the next call. Comment lines (``: keepalive``) are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

DONE_FRAME = b"data: [DONE]\n\n"


@dataclass(slots=True)  # one per streamed chunk: not frozen, which costs ~1 µs more to build
class Event:
    event: str | None
    data: bytes


class LimitExceeded(Exception):
    """An upstream stream past one of the parser's limits (an event, or the whole stream)."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} exceeded {limit} bytes")
        self.what = what
        self.limit = limit


_UNLIMITED = 1 << 62


class SSEParser:
    """Events out of byte chunks, in time linear in the bytes fed.

    A chunk that holds whole events (the usual case) is sliced as it is, without a copy. A partial event
    waits in a ``bytearray`` that the next chunks are appended to, and the search for the blank line
    that ends it resumes where the last one stopped, so an event arriving in many small chunks, or a
    line that never ends, costs no re-scan per chunk. ``max_event`` bounds an event (a partial one
    too: past it ``LimitExceeded`` rather than buffering on); ``max_total`` bounds the whole stream.
    """

    __slots__ = ("_buf", "_cr", "_max_event", "_max_total", "_scanned", "_total")

    def __init__(self, max_event: int = _UNLIMITED, max_total: int = _UNLIMITED) -> None:
        self._buf = bytearray()
        self._scanned = 0  # the bytes of _buf already searched for b"\n\n", less one
        self._cr = False  # the last chunk ended in "\r": a "\n" opening the next is part of that CRLF
        self._max_event = max_event
        self._max_total = max_total
        self._total = 0

    def feed(self, chunk: bytes) -> list[Event]:
        return list(self.events(chunk))

    def events(self, chunk: bytes) -> Iterator[Event]:
        """``feed``, lazily: each event is parsed when it is asked for, so the first of a chunk that
        holds a whole stream goes on its way before the rest is parsed. Consume it to the end."""
        self._total += len(chunk)
        if self._total > self._max_total:
            raise LimitExceeded("stream", self._max_total)
        if b"\r" in chunk or self._cr:
            chunk = self._normalize(chunk)
        limit = self._max_event
        search = 0
        if self._buf:
            pending = self._buf
            pending += chunk
            search = pending.find(b"\n\n", self._scanned)
            if search < 0:  # the partial event goes on: nothing to parse yet, nothing re-scanned
                if len(pending) > limit:
                    self._buf = bytearray()
                    raise LimitExceeded("event", limit)
                self._scanned = len(pending) - 1
                return
            chunk, self._buf = bytes(pending), bytearray()  # one copy per event that was split
        start = 0
        while True:
            end = chunk.find(b"\n\n", search)
            if end < 0:
                break
            if end - start > limit:
                raise LimitExceeded("event", limit)
            event = _parse_block(chunk[start:end])
            start = search = end + 2
            if event is not None:
                yield event
        rest = len(chunk) - start
        if rest:
            if rest > limit:
                raise LimitExceeded("event", limit)
            self._buf += chunk[start:] if start else chunk
            self._scanned = rest - 1

    def _normalize(self, chunk: bytes) -> bytes:
        """CRLF and lone CR as LF, a CRLF split across two chunks included."""
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def flush(self) -> list[Event]:
        """Events left in the buffer when the stream ended without a final blank line."""
        rest = bytes(self._buf).strip(b"\n")
        self._buf = bytearray()
        self._scanned = 0
        if not rest:
            return []
        event = _parse_block(rest)
        return [event] if event is not None else []

    @property
    def pending(self) -> bool:
        return bool(self._buf.strip())


def _parse_block(block: bytes) -> Event | None:
    if block.startswith(b"data: ") and b"\n" not in block:  # the usual one-line event, taken whole
        return Event(None, block[6:])
    name: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        key, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if key == b"data":
            data.append(value)
        elif key == b"event":
            name = value.decode("utf-8", "replace")
    if not data and name is None:
        return None
    return Event(name, b"\n".join(data))


def data_frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def named_frame(event: str, payload: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"
