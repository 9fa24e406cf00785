"""gateway/providers/decode.py: compressed upstream answers decoded within a cap (issue 16)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.config.model import UpstreamLimits
from gateway.errors import UpstreamStatusError, UpstreamUnavailable
from gateway.providers import http
from gateway.providers.decode import (
    PIECE,
    DecodedTooLarge,
    Decoder,
    UnsupportedEncoding,
    decode_stream,
    decode_whole,
    encoding_of,
)

MB = 1024 * 1024


def bomb(decoded_mb: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MB)
    return b"".join(z.compress(block) for _ in range(decoded_mb)) + z.flush()


def test_gzip_and_both_kinds_of_deflate_decode() -> None:
    body = b'{"ok": true}' * 100
    assert decode_whole(gzip.compress(body), b"gzip", 10_000) == body
    assert decode_whole(zlib.compress(body), b"deflate", 10_000) == body
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_whole(raw.compress(body) + raw.flush(), b"deflate", 10_000) == body
    assert encoding_of([(b"Content-Encoding", b" GZIP ")]) == b"gzip"
    assert encoding_of([(b"content-encoding", b"identity")]) is None


def test_a_bomb_stops_at_the_limit_in_bounded_pieces() -> None:
    packed = bomb(64)  # ~64 KB that inflates to 64 MB
    assert len(packed) < MB
    decoder = Decoder(b"gzip", 4 * MB)
    out = 0
    with pytest.raises(DecodedTooLarge):
        for piece in decoder.feed(packed):
            assert len(piece) <= PIECE  # never the whole inflated chunk at once
            out += len(piece)
    assert out <= 4 * MB
    with pytest.raises(DecodedTooLarge):
        decode_whole(packed, b"gzip", 4 * MB)


def test_an_error_body_is_cut_not_refused() -> None:
    assert decode_whole(bomb(8), b"gzip", 1000, cut=True) == bytes(1000)


def test_unknown_or_broken_encodings_are_refused() -> None:
    with pytest.raises(UnsupportedEncoding):
        Decoder(b"br", MB)
    with pytest.raises(UnsupportedEncoding):
        decode_whole(b"not gzip at all", b"gzip", MB)


def test_a_stream_is_decoded_as_it_arrives_within_the_limit() -> None:
    packed = bomb(16)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(packed), 1000):
            yield packed[i : i + 1000]

    async def run(limit: int) -> int:
        return sum([len(p) async for p in decode_stream(chunks(), b"gzip", limit)])

    assert asyncio.run(run(16 * MB)) == 16 * MB
    with pytest.raises(DecodedTooLarge):
        asyncio.run(run(MB))


class _Endless(httpx.AsyncByteStream):
    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(10_000):
            self.sent += 65536
            yield b"z" * 65536

    async def aclose(self) -> None:
        return None


def test_limits_hold_through_any_httpx_transport_too() -> None:
    """The same limits when the upstream is behind another transport (httpx.MockTransport here)."""
    body = _Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        status = 500 if request.url.path == "/error" else 200
        encoding = {"content-encoding": "gzip"} if request.url.path == "/bomb" else {}
        if encoding:
            return httpx.Response(200, headers=encoding, stream=_Once(bomb(64)))
        return httpx.Response(status, stream=body)

    limits = UpstreamLimits(max_body_bytes=MB, max_error_bytes=2000)
    transport = httpx.MockTransport(handler)

    async def call(path: str) -> Exception:
        try:
            await http.post_json(
                transport, "p", "http://up" + path, body={}, headers={}, timeout_s=5, limits=limits
            )
        except Exception as exc:
            return exc
        raise AssertionError("no error")

    too_big = asyncio.run(call("/ok"))
    assert isinstance(too_big, UpstreamUnavailable) and "limit (1048576 bytes)" in too_big.message
    assert body.sent < 4 * MB
    error = asyncio.run(call("/error"))
    assert isinstance(error, UpstreamStatusError) and error.message.endswith("z" * 200)
    bombed = asyncio.run(call("/bomb"))
    assert isinstance(bombed, UpstreamUnavailable) and "decoded answer" in bombed.message


class _Once(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
