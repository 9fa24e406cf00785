"""Loopback servers for the egress tests: an OpenAI-like upstream (plain, TLS or mTLS) and a forward proxy
(CONNECT tunnels for https:// targets, absolute-form requests for http:// ones), each recording what it saw.

Both run on one asyncio loop in a background thread, on free 127.0.0.1 ports; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import Coroutine
from typing import Any

from tests.upstreams import chat_body, sse, stream_chunks


class Loop:
    """An event loop in a daemon thread; ``run`` executes a coroutine on it and waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def stop(self) -> None:
        self.run(self._cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    @staticmethod
    async def _cancel_all() -> None:
        """Servers closed and their connections' tasks ended, so nothing is left to a closed loop."""
        for server in Loop.servers.pop(asyncio.get_running_loop(), []):
            server.close()
        me = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    servers: dict[asyncio.AbstractEventLoop, list[asyncio.Server]] = {}

    def serve(self, handler: Any, context: ssl.SSLContext | None = None) -> asyncio.Server:
        server: asyncio.Server = self.run(asyncio.start_server(handler, "127.0.0.1", 0, ssl=context))
        Loop.servers.setdefault(self.loop, []).append(server)
        return server


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        TimeoutError,
        ConnectionError,
        ssl.SSLError,
    ):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    return lines[0], headers, body


class Upstream:
    """Answers POST .../chat/completions like OpenAI (streamed when asked); ``ssl`` makes it HTTPS."""

    def __init__(self, loop: Loop, context: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.peer_certs: list[dict[str, Any] | None] = []
        self._context = context
        self._server = loop.serve(self._serve, context)
        self.port: int = self._server.sockets[0].getsockname()[1]
        self._loop = loop

    @property
    def url(self) -> str:
        return f"{'https' if self._context else 'http'}://127.0.0.1:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.closing(writer):
            while (request := await _read_request(reader)) is not None:
                line, headers, body = request
                self.requests.append((line, headers))
                ssl_object = writer.get_extra_info("ssl_object")
                self.peer_certs.append(ssl_object.getpeercert() if ssl_object else None)
                payload = json.loads(body or b"{}")
                model = payload.get("model", "m")
                if payload.get("stream"):
                    out = sse(*stream_chunks(model, ["Hi", " there"], usage=True), "[DONE]")
                    kind = b"text/event-stream"
                else:
                    out, kind = json.dumps(chat_body(model)).encode(), b"application/json"
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                    % (kind, len(out), out)
                )
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.drain()

    def stop(self) -> None:
        self._server.close()


class Proxy:
    """A forward proxy: CONNECT host:port tunnels bytes both ways; ``GET http://...`` (absolute form) is
    forwarded. ``seen`` records each request line (the CONNECT target or the absolute URL)."""

    def __init__(self, loop: Loop) -> None:
        self.seen: list[str] = []
        self._server = loop.serve(self._serve)
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.closing(writer):
            request = await _read_request(reader)
            if request is None:
                return
            line, headers, body = request
            method, target, _ = line.split(" ", 2)
            self.seen.append(f"{method} {target}")
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                return
            await self._forward(method, target, headers, body, reader, writer)

    async def _forward(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if not target.startswith("http://"):
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return
        authority, _, path = target[len("http://") :].partition("/")
        host, _, port = authority.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        kept = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if not k.startswith("proxy-"))
        up_writer.write(f"{method} /{path} HTTP/1.1\r\n{kept}connection: close\r\n\r\n".encode() + body)
        await up_writer.drain()
        head = await up_reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(h.split(b":")[1]) for h in head.lower().split(b"\r\n") if h.startswith(b"content-length:")),
            0,
        )
        # one request per client connection keeps the proxy simple; the client is told so
        writer.write(head[:-2] + b"connection: close\r\n\r\n" + await up_reader.readexactly(length))
        await writer.drain()
        up_writer.close()

    def stop(self) -> None:
        self._server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        return
    finally:
        writer.close()
