"""A fast OpenAI-compatible mock upstream for benchmarks: a raw ``asyncio.Protocol`` HTTP/1.1 server.

``POST .../chat/completions`` answers a fixed chat.completion with usage, or, with ``"stream": true``,
an SSE stream (a role chunk, N content chunks, a finish chunk, a usage chunk when
``stream_options.include_usage``, then ``data: [DONE]``) sent with chunked transfer encoding.
Responses are prebuilt bytes, so the upstream costs a few microseconds per request and is never
the bottleneck of a gateway measurement. ``GET /healthz`` answers 200.

Two request headers override the command line for one request, so one upstream serves every shape a
benchmark needs (the gateway sends them as provider ``headers`` from routes.yaml): ``x-bench-chunks: N``
(content chunks of this stream) and ``x-bench-delay-ms: D`` (pause before each chunk of this stream).

Run: ``python -m bench.upstream --port 9001 [--chunks 20] [--delay-ms 0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import orjson

from bench.http1 import LAST_CHUNK, Head, ProtocolError, chunk, take_chunks, take_head

CREATED = 1_700_000_000
PROMPT_TOKENS = 9
REPLY = "Hello from the bench upstream."
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    chunks: int = 20
    delay_s: float = 0.0
    token: str = " tok"


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
    return head % (status, content_type, len(body)) + body


def _json(status: bytes, obj: object) -> bytes:
    return _response(status, b"application/json", orjson.dumps(obj))


def _error(status: bytes, message: str) -> bytes:
    err = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return _json(status, {"error": err})


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
HEALTHZ = _response(b"200 OK", b"text/plain", b"ok")


class Responses:
    """Prebuilt response bytes, cached per model name (the model is echoed back)."""

    MAX_CACHED = 64

    def __init__(self, cfg: UpstreamConfig) -> None:
        self._cfg = cfg
        self._chat: dict[str, bytes] = {}
        self._streams: dict[tuple[str, bool, int], list[bytes]] = {}

    def chat(self, model: str) -> bytes:
        cached = self._chat.get(model)
        if cached is None:
            cached = _json(b"200 OK", self._completion(model))
            self._remember(self._chat, model, cached)
        return cached

    def stream(self, model: str, include_usage: bool, chunks: int) -> list[bytes]:
        """The stream as transfer-encoded frames: head + first event, ..., last event + last chunk."""
        key = (model, include_usage, chunks)
        cached = self._streams.get(key)
        if cached is None:
            events = [
                chunk(b"data: " + orjson.dumps(c) + b"\n\n")
                for c in self._chunks(model, include_usage, chunks)
            ]
            events.append(chunk(b"data: [DONE]\n\n") + LAST_CHUNK)
            events[0] = STREAM_HEAD + events[0]
            cached = events
            self._remember(self._streams, key, cached)
        return cached

    def _remember(self, cache: dict[Any, Any], key: object, value: object) -> None:
        if len(cache) >= self.MAX_CACHED:
            cache.clear()
        cache[key] = value

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        total = PROMPT_TOKENS + completion_tokens
        return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens, "total_tokens": total}

    def _completion(self, model: str) -> dict[str, object]:
        message = {"role": "assistant", "content": REPLY, "refusal": None}
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": self._usage(7),
        }

    def _chunks(self, model: str, include_usage: bool, n: int) -> list[dict[str, object]]:
        def make(delta: dict[str, object], finish: str | None) -> dict[str, object]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            out: dict[str, object] = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "choices": [choice],
            }
            if include_usage:
                out["usage"] = None
            return out

        chunks = [make({"role": "assistant", "content": ""}, None)]
        chunks += [make({"content": self._cfg.token}, None) for _ in range(n)]
        chunks.append(make({}, "stop"))
        if include_usage:
            last = make({}, None)
            last["choices"] = []
            last["usage"] = self._usage(n)
            chunks.append(last)
        return chunks


class _Connection(asyncio.Protocol):
    """One keep-alive connection; pipelined requests are answered in order."""

    def __init__(self, responses: Responses, cfg: UpstreamConfig) -> None:
        self._responses = responses
        self._cfg = cfg
        self._buf = bytearray()
        self._body = bytearray()
        self._head: Head | None = None
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check here.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._task is None:
            self._serve_pending()

    def _serve_pending(self) -> None:
        transport = self._transport
        while transport is not None and not transport.is_closing():
            try:
                request = self._take_request()
            except ProtocolError as exc:
                transport.write(_error(b"400 Bad Request", str(exc)))
                transport.close()
                return
            if request is None or not self._respond(transport, *request):
                return

    def _take_request(self) -> tuple[Head, bytes] | None:
        if self._head is None:
            self._head = take_head(self._buf)
            if self._head is None:
                return None
        head = self._head
        if head.chunked:
            if not take_chunks(self._buf, self._body):
                return None
            body = bytes(self._body)
            self._body.clear()
        else:
            size = head.content_length or 0
            if len(self._buf) < size:
                return None
            body = bytes(self._buf[:size])
            del self._buf[:size]
        self._head = None
        return head, body

    def _respond(self, transport: asyncio.Transport, head: Head, body: bytes) -> bool:
        """Answer one request; False when the connection is busy streaming or closed."""
        method, _, rest = head.start_line.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            paced = self._chat(transport, head, body)
            if paced is not None:
                frames, delay_s = paced
                self._task = asyncio.get_running_loop().create_task(
                    self._stream_slowly(transport, frames, delay_s, head.wants_close)
                )
                return False
        elif method == b"GET" and path == b"/healthz":
            transport.write(HEALTHZ)
        elif method == b"GET" and path.endswith(b"/models"):
            transport.write(_json(b"200 OK", {"object": "list", "data": [_model("bench-model")]}))
        else:
            transport.write(_error(b"404 Not Found", f"no route for {path.decode(errors='replace')}"))
        if head.wants_close:
            transport.close()
            return False
        return True

    def _chat(
        self, transport: asyncio.Transport, head: Head, body: bytes
    ) -> tuple[list[bytes], float] | None:
        """Write the answer; return the frames and their pace instead when a task must pace them."""
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            transport.write(_error(b"400 Bad Request", "body is not JSON"))
            return None
        if not isinstance(request, dict):
            transport.write(_error(b"400 Bad Request", "body must be a JSON object"))
            return None
        model = str(request.get("model") or "bench-model")
        if request.get("stream") is not True:
            transport.write(self._responses.chat(model))
            return None
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        try:
            chunks = int(head.headers.get(b"x-bench-chunks", self._cfg.chunks))
            delay_s = float(head.headers.get(b"x-bench-delay-ms", self._cfg.delay_s * 1000)) / 1000
        except ValueError:
            transport.write(_error(b"400 Bad Request", "bad x-bench-chunks or x-bench-delay-ms"))
            return None
        frames = self._responses.stream(model, include_usage, max(0, chunks))
        if delay_s <= 0:
            transport.writelines(frames)
            return None
        return frames, delay_s

    async def _stream_slowly(
        self, transport: asyncio.Transport, frames: list[bytes], delay_s: float, close: bool
    ) -> None:
        transport.write(frames[0])
        for frame in frames[1:]:
            await asyncio.sleep(delay_s)
            if transport.is_closing():
                return
            transport.write(frame)
        self._task = None
        if close:
            transport.close()
        else:
            self._serve_pending()


def _model(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "bench"}


async def start(host: str, port: int, cfg: UpstreamConfig) -> asyncio.Server:
    """Start listening on the running loop; the caller owns the returned server."""
    responses = Responses(cfg)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Connection(responses, cfg), host, port, backlog=1024)


async def _serve(host: str, port: int, cfg: UpstreamConfig) -> None:
    server = await start(host, port, cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"bench upstream listening on http://{host}:{port}/v1", flush=True)
    async with server:
        await stop.wait()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.upstream", description="Fast mock OpenAI upstream."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream (default 20)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pause before each streamed chunk")
    args = parser.parse_args(argv)
    cfg = UpstreamConfig(chunks=max(0, args.chunks), delay_s=max(0.0, args.delay_ms) / 1000)
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(_serve(args.host, args.port, cfg))


if __name__ == "__main__":
    main(sys.argv[1:])
