"""A minimal hook sidecar for ``bench.plugins``: every ``POST`` answers ``{"action": "continue"}``, every
``GET`` 200. Written on raw asyncio (like ``bench.upstream``) so the figures are the gateway's: what a
hook costs the gateway, not what a web framework costs the sidecar.

    python -m bench.hook_sidecar --port N
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import httptools

from bench.upstream import run_loop

_CONTINUE = b'{"action":"continue"}'
_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_CONTINUE),
    _CONTINUE,
)
_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is one in practice

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_message_complete(self) -> None:
        assert self._transport is not None
        self._transport.write(_ANSWER if self._parser.get_method() == b"POST" else _OK)


async def _serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Connection, host, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hook_sidecar", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(_serve(args.host, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
