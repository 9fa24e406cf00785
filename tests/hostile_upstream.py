"""A hostile OpenAI-compatible upstream on loopback: answers that are too big, endless or malformed.

HTTP/1.1 on 127.0.0.1 (an asyncio server in its own thread) whose behaviour is the first path segment,
``/<mode>/v1/chat/completions``. Every hostile answer is generated as it is sent (never allocated
whole) and stops once the gateway hangs up or after ``cap`` bytes, so a test is bounded in bytes and
time whatever the gateway does. ``sent[mode]`` counts body bytes written, ``open`` the connections
still held, ``open_answers[mode]`` the answers still being sent (the gateway must let go of a hostile
answer), ``served`` the requests per mode.

Modes:
    normal        a valid answer (JSON, or an SSE stream with usage when ``"stream": true``)
    huge          200 with ``content-length`` 2 GB, zeros
    endless       200, chunked, never ends
    huge_error    500 with ``content-length`` 1 GB
    gzip_bomb     200, gzip: ~256 KB on the wire that inflates to a valid 256 MB chat completion
    endless_sse   an SSE stream of 8 KB chunks without usage and without ``[DONE]``
    noline        an SSE stream whose first line never ends (``data: xxxx…``)
    paced         an SSE stream of 16 KB content chunks, endless (for clients that stop reading)
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

MB = 1024 * 1024
_ZEROS = bytes(MB)


def chat_completion(model: str, content: str = "Hello there!", usage: bool = True) -> dict[str, Any]:
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8} if usage else None,
    }


def chunk(model: str, content: str, **extra: Any) -> bytes:
    payload = {
        "id": "chatcmpl-hostile-s",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        **extra,
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class HostileUpstream:
    def __init__(self, cap: int = 3 * 1024 * MB) -> None:
        self.cap = cap
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.open = 0
        self.sent: collections.Counter[str] = collections.Counter()
        self.served: collections.Counter[str] = collections.Counter()
        self.open_answers: collections.Counter[str] = collections.Counter()
        self.port = 0

    def start(self) -> HostileUpstream:
        self.thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(5)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            while await self._one(reader, writer):
                continue
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.transport.abort()  # the gateway hung up mid-answer: what a hostile answer expects
        finally:
            self.open -= 1
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open for the next."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        mode = lines[0].split(" ")[1].split("/")[1]
        length = next(
            int(v) for k, _, v in (h.partition(": ") for h in lines[1:]) if k.lower() == "content-length"
        )
        body = json.loads(await reader.readexactly(length))
        self.served[mode] += 1
        self.open_answers[mode] += 1
        try:
            return await MODES[mode](_Answer(self, mode, writer, body))
        finally:
            self.open_answers[mode] -= 1


class _Answer:
    def __init__(self, server: HostileUpstream, mode: str, writer: asyncio.StreamWriter, body: Any) -> None:
        self.server = server
        self.mode = mode
        self.writer = writer
        self.body = body
        self.model = str(body.get("model", "m"))
        self.stream = bool(body.get("stream"))

    async def head(self, status: int, **headers: str) -> None:
        lines = [f"HTTP/1.1 {status} X"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def send(self, data: bytes, *, chunked: bool = False) -> None:
        self.server.sent[self.mode] += len(data)
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        await self.writer.drain()

    async def pour(self, pieces: AsyncIterator[bytes] | Any, *, chunked: bool) -> bool:
        """Send ``pieces`` until they end (a chunked body is then ended properly) or ``cap`` bytes
        went out (then the connection is dropped)."""
        async for piece in _aiter(pieces):
            if self.server.sent[self.mode] > self.server.cap:
                self.writer.transport.abort()
                return False
            await self.send(piece, chunked=chunked)
        if chunked:
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()
        return True


async def _aiter(pieces: Any) -> AsyncIterator[bytes]:
    if hasattr(pieces, "__aiter__"):
        async for piece in pieces:
            yield piece
    else:
        for piece in pieces:
            yield piece
            await asyncio.sleep(0)


def _forever(piece: bytes) -> Any:
    while True:
        yield piece


async def normal(a: _Answer) -> bool:
    if not a.stream:
        raw = json.dumps(chat_completion(a.model)).encode()
        await a.head(200, content_type="application/json", content_length=str(len(raw)))
        await a.send(raw)
        return True
    await a.head(200, content_type="text/event-stream", transfer_encoding="chunked")
    for word in ("Hello", " there", "!"):
        await a.send(chunk(a.model, word, usage=None), chunked=True)
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    final = {"id": "chatcmpl-hostile-s", "object": "chat.completion.chunk", "created": 1, "model": a.model}
    await a.send(
        b"data: " + json.dumps({**final, "choices": [], "usage": usage}).encode() + b"\n\n", chunked=True
    )
    await a.send(b"data: [DONE]\n\n", chunked=True)
    a.writer.write(b"0\r\n\r\n")
    await a.writer.drain()
    return True


async def huge(a: _Answer) -> bool:
    await a.head(200, content_type="application/json", content_length=str(2 * 1024 * MB))
    return await a.pour(_forever(_ZEROS), chunked=False)


async def endless(a: _Answer) -> bool:
    await a.head(200, content_type="application/json", transfer_encoding="chunked")
    return await a.pour(_forever(_ZEROS), chunked=True)


async def huge_error(a: _Answer) -> bool:
    await a.head(500, content_type="application/json", content_length=str(1024 * MB))
    prefix = b'{"error": {"message": "' + b"x" * (MB - 24)
    return await a.pour(_aiter_chain([prefix], _forever(b"x" * MB)), chunked=False)


def _aiter_chain(first: list[bytes], rest: Any) -> Any:
    yield from first
    yield from rest


def _bomb(model: str, decoded_mb: int) -> Any:
    """A chat completion whose content is ``decoded_mb`` MB of 'a', gzipped as it is produced."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    head, tail = json.dumps(chat_completion(model, "\x00")).encode().split(b"\\u0000")
    yield z.compress(head)
    block = b"a" * MB
    for _ in range(decoded_mb):
        out = z.compress(block)
        if out:
            yield out
    yield z.compress(tail) + z.flush()


async def gzip_bomb(a: _Answer) -> bool:
    if a.stream:  # the same, as one SSE event per MB
        await a.head(
            200, content_type="text/event-stream", transfer_encoding="chunked", content_encoding="gzip"
        )
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        frame = chunk(a.model, "a" * (MB - 300))
        return await a.pour((out for _ in range(1024) if (out := z.compress(frame))), chunked=True)
    await a.head(200, content_type="application/json", transfer_encoding="chunked", content_encoding="gzip")
    return await a.pour(_bomb(a.model, 256), chunked=True)


async def endless_sse(a: _Answer) -> bool:
    await a.head(200, content_type="text/event-stream", transfer_encoding="chunked")
    # 8 KB per frame, one token of text: what holds memory is the frame, not its text
    frame = chunk(a.model, "hi", usage=None, padding="p" * 8000)
    return await a.pour(_forever(frame * 16), chunked=True)


async def noline(a: _Answer) -> bool:
    await a.head(200, content_type="text/event-stream", transfer_encoding="chunked")
    return await a.pour(_aiter_chain([b"data: "], _forever(b"x" * 16384)), chunked=True)


async def paced(a: _Answer) -> bool:
    await a.head(200, content_type="text/event-stream", transfer_encoding="chunked")

    async def frames() -> AsyncIterator[bytes]:
        frame = chunk(a.model, "y" * 16384, usage=None)
        while True:
            yield frame
            await asyncio.sleep(0.002)

    return await a.pour(frames(), chunked=True)


MODES: dict[str, Callable[[_Answer], Awaitable[bool]]] = {
    "normal": normal,
    "huge": huge,
    "endless": endless,
    "huge_error": huge_error,
    "gzip_bomb": gzip_bomb,
    "endless_sse": endless_sse,
    "noline": noline,
    "paced": paced,
}
