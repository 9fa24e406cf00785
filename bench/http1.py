"""Minimal HTTP/1.1 framing shared by the bench load generator and the mock upstream.

Only what loopback benchmarking needs: message heads, ``Content-Length`` and ``chunked`` bodies.
Both sides parse in place on a ``bytearray`` so a keep-alive connection allocates little per request.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD_BYTES = 65536
HEAD_END = b"\r\n\r\n"


class ProtocolError(Exception):
    """The peer sent something this minimal HTTP/1.1 parser does not understand."""


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed request or response head; header names are lower-cased."""

    start_line: bytes
    headers: dict[bytes, bytes]
    content_length: int | None
    chunked: bool
    wants_close: bool


def take_head(buf: bytearray) -> Head | None:
    """Remove and parse one message head from ``buf``; ``None`` while it is incomplete."""
    end = buf.find(HEAD_END)
    if end < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise ProtocolError("message head too large")
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    del buf[: end + 4]
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    length = headers.get(b"content-length")
    try:
        content_length = None if length is None else int(length)
    except ValueError as exc:
        raise ProtocolError(f"bad content-length {length!r}") from exc
    chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
    wants_close = headers.get(b"connection", b"").lower() == b"close"
    return Head(lines[0], headers, content_length, chunked, wants_close)


def response_status(head: Head) -> int:
    """The status code of a response head (``HTTP/1.1 200 OK`` → 200)."""
    parts = head.start_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ProtocolError(f"bad status line {head.start_line!r}")
    return int(parts[1])


def take_chunks(buf: bytearray, out: bytearray) -> bool:
    """Move every complete chunk of a ``chunked`` body from ``buf`` to ``out``.

    Returns True once the last chunk (and any trailers) has been consumed. A partial chunk stays
    in ``buf`` for the next call: chunks on this path are small, so waiting for a whole one is cheap.
    """
    pos = 0
    available = len(buf)
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            break
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        except ValueError as exc:
            raise ProtocolError(f"bad chunk size {bytes(buf[pos:eol])!r}") from exc
        if size == 0:
            end = buf.find(HEAD_END, pos)
            if end < 0:
                break
            del buf[: end + 4]
            return True
        start = eol + 2
        stop = start + size
        if stop + 2 > available:
            break
        out += buf[start:stop]
        pos = stop + 2
    del buf[:pos]
    return False


def chunk(payload: bytes) -> bytes:
    """One ``chunked`` transfer-encoding frame."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


LAST_CHUNK = b"0\r\n\r\n"
