"""Content-Encoding of upstream answers, decoded with a cap on what comes out.

The gateway asks for no compression, but an upstream (or a proxy in front of it) may send some anyway.
httpx's decoders inflate a whole chunk at once, so a 1 MB gzip bomb becomes a 1 GB body in memory.
Here output is produced in pieces of at most ``PIECE`` bytes and counted: past ``limit`` decoding stops
(``DecodedTooLarge``), so memory stays near the cap whatever the ratio. gzip and deflate are decoded
(zlib, in the standard library); any other encoding is refused rather than forwarded undecoded.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator

PIECE = 64 * 1024
"""The most one decode step produces: bounds memory per step, whatever one input chunk inflates to."""


class DecodedTooLarge(Exception):
    """The decoded answer passed its limit; decoding stopped there."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the decoded answer exceeded {limit} bytes")
        self.limit = limit


class UnsupportedEncoding(Exception):
    """A Content-Encoding the gateway cannot decode (it never asked for one)."""


def encoding_of(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The answer's Content-Encoding, lower-case, or None for none (``identity`` is none)."""
    for name, value in headers:
        if name.lower() == b"content-encoding":
            value = value.strip().lower()
            return None if value in (b"", b"identity") else value
    return None


class Decoder:
    """Incremental gzip/deflate decoding, at most ``limit`` bytes out in all."""

    __slots__ = ("_first", "_inflate", "_limit", "_out", "overflow")

    def __init__(self, encoding: bytes, limit: int) -> None:
        if encoding in (b"gzip", b"x-gzip"):
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == b"deflate":
            self._inflate = zlib.decompressobj()
        else:
            raise UnsupportedEncoding(f"unsupported content-encoding {encoding.decode('latin-1')!r}")
        self._first = encoding == b"deflate"  # "deflate" is zlib-wrapped by the RFC, raw by some servers
        self._limit = limit
        self._out = 0
        self.overflow = b""
        """The piece that went past the limit (for a caller that keeps what fits)."""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded pieces of ``data``; raises ``DecodedTooLarge`` once past the limit."""
        if self._first and data:
            self._first = False
            if data[0] & 0x0F != 8:  # no zlib header: raw deflate
                self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        while data:
            try:
                piece = self._inflate.decompress(data, PIECE)
            except zlib.error as exc:
                raise UnsupportedEncoding(f"malformed compressed body: {exc}") from exc
            data = self._inflate.unconsumed_tail
            if piece:
                yield self._count(piece)

    def flush(self) -> bytes:
        """What the decoder still holds once the input ended (bounded like the rest)."""
        return self._count(self._inflate.flush(PIECE))

    def _count(self, piece: bytes) -> bytes:
        self._out += len(piece)
        if self._out > self._limit:
            self.overflow = piece
            raise DecodedTooLarge(self._limit)
        return piece


def decode_whole(data: bytes, encoding: bytes, limit: int, *, cut: bool = False) -> bytes:
    """A whole body decoded, at most ``limit`` bytes: past it ``DecodedTooLarge``, or with ``cut``
    the first ``limit`` bytes (an error body only needs its start)."""
    decoder = Decoder(encoding, limit)
    parts: list[bytes] = []
    try:
        parts += decoder.feed(data)
        parts.append(decoder.flush())
    except DecodedTooLarge:
        if not cut:
            parts.clear()  # the traceback keeps this frame: let the bytes go now
            raise
        parts.append(decoder.overflow)
    return b"".join(parts)[:limit]


async def decode_stream(chunks: AsyncIterator[bytes], encoding: bytes, limit: int) -> AsyncIterator[bytes]:
    """A body arriving in chunks, decoded piece by piece, at most ``limit`` bytes in all."""
    decoder = Decoder(encoding, limit)
    async for chunk in chunks:
        for piece in decoder.feed(chunk):
            yield piece
    rest = decoder.flush()
    if rest:
        yield rest
