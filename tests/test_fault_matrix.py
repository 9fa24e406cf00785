"""The fault matrix: a real fault-injecting HTTP upstream on loopback, the gateway live, the real SDK.

Every fault runs on its own (the client sees the right status and OpenAI error, or success through
a retry) and on a primary with a healthy fallback (the client sees success, unless the fault comes
after the first streamed byte). Every request must end within its route's ``timeout_s`` + 100 ms,
and afterwards the gateway holds no upstream connection or task it did not hold before.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from conftest import BUDGETS, KEY_ACME, Gateway, GatewayFactory, free_port
from upstreams import chat_body, sse, stream_chunks

TIMEOUT_S = 1.5  # the routes' deadline, all attempts included
ATTEMPT_S = 0.2  # a primary's per-attempt timeout when it has a fallback to move on to
MARGIN_S = 0.1  # the acceptance bound: no request outlives its deadline by more


class FaultServer:
    """HTTP/1.1 on 127.0.0.1 whose behaviour is the first path segment: ``/<fault>/v1/...``.

    ``<fault>xN`` misbehaves on the first N requests to that path and answers normally after.
    ``open`` counts connections the server still holds; ``hits`` counts requests per fault.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.open = 0
        self.hits: collections.Counter[str] = collections.Counter()
        self.port = 0

    def start(self) -> FaultServer:
        self.thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(5)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def url(self, fault: str) -> str:
        return f"http://127.0.0.1:{self.port}/{fault}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            while await self._one(reader, writer):
                continue
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.transport.abort()  # the gateway went away mid-exchange: nothing to answer
        finally:
            self.open -= 1
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open for the next."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        path = lines[0].split(" ")[1]
        length = next(
            int(v) for k, _, v in (h.partition(": ") for h in lines[1:]) if k.lower() == "content-length"
        )
        body = json.loads(await reader.readexactly(length))
        fault, _, n = path.split("/")[1].partition("x")
        self.hits[path.split("/")[1]] += 1
        if n and self.hits[path.split("/")[1]] > int(n):
            fault = "ok"
        return await FAULTS[fault](Reply(reader, writer, body))


@dataclass
class Reply:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    body: dict[str, Any]

    async def head(self, status: int, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def json(self, status: int, payload: Any, **headers: str) -> bool:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.head(
            status, {"content-type": "application/json", "content-length": str(len(raw)), **headers}
        )
        self.writer.write(raw)
        await self.writer.drain()
        return True

    async def stream_head(self) -> None:
        await self.head(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked"})

    async def chunk(self, data: bytes) -> None:
        self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.writer.drain()

    async def end(self) -> bool:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()
        return True

    async def stall(self) -> bool:
        """Hold (up to 10 s) until the gateway hangs up; the connection is not reused."""
        try:
            await asyncio.wait_for(self.reader.read(1), 10)
        except TimeoutError:
            return False
        return False

    async def reset(self) -> bool:
        await asyncio.sleep(0.02)  # let the bytes already written leave first
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()  # SO_LINGER 0: the close is a RST
        return False

    def chunks(self) -> list[bytes]:
        model = self.body["model"]
        return [sse(c) for c in stream_chunks(model, ["Hello", " there", "!"], usage=True)]


async def ok(r: Reply) -> bool:
    if not r.body.get("stream"):
        return await r.json(200, chat_body(r.body["model"]))
    await r.stream_head()
    for c in r.chunks():
        await r.chunk(c)
    await r.chunk(sse("[DONE]"))
    return await r.end()


async def rate_limited(r: Reply) -> bool:
    error = {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}
    return await r.json(429, error, **{"retry-after": "1", "retry-after-ms": "50"})


def status(code: int) -> Callable[[Reply], Any]:
    async def answer(r: Reply) -> bool:
        return await r.json(code, {"error": {"message": f"upstream says {code}", "type": "server_error"}})

    return answer


async def reset_mid_body(r: Reply) -> bool:
    if r.body.get("stream"):
        await r.stream_head()
        await r.chunk(r.chunks()[0])
    else:
        await r.head(200, {"content-type": "application/json", "content-length": "500"})
        r.writer.write(b'{"id": "chatcmpl-1", "obj')
        await r.writer.drain()
    return await r.reset()


async def slow_headers(r: Reply) -> bool:
    return await r.stall()


async def slow_body(r: Reply) -> bool:
    if r.body.get("stream"):
        await r.stream_head()
        await r.chunk(r.chunks()[0])
    else:
        await r.head(200, {"content-type": "application/json", "content-length": "500"})
        r.writer.write(b'{"id": "chatcmpl-1", ')
        await r.writer.drain()
    return await r.stall()


async def malformed(r: Reply) -> bool:
    return await r.json(200, b'{"id": "chatcmpl-1", "choices": [tru')


async def truncated(r: Reply) -> bool:
    """A stream that stops cleanly (HTTP-wise) after two chunks, without ``[DONE]``."""
    await r.stream_head()
    for c in r.chunks()[:2]:
        await r.chunk(c)
    return await r.end()


async def truncated_early(r: Reply) -> bool:
    """A 200 stream with no event at all."""
    await r.stream_head()
    return await r.end()


def inband_error(after: int) -> Callable[[Reply], Any]:
    async def answer(r: Reply) -> bool:
        await r.stream_head()
        for c in r.chunks()[:after]:
            await r.chunk(c)
        await r.chunk(sse({"error": {"message": "model overloaded", "type": "server_error"}}))
        return await r.end()

    return answer


FAULTS: dict[str, Callable[[Reply], Any]] = {
    "ok": ok,
    "ratelimited": rate_limited,
    "e500": status(500),
    "e503": status(503),
    "e400": status(400),
    "reset": reset_mid_body,
    "slowheaders": slow_headers,
    "slowbody": slow_body,
    "malformed": malformed,
    "truncated": truncated,
    "truncatedearly": truncated_early,
    "sseerror": inband_error(0),
    "sseerrorlate": inband_error(2),
}


@dataclass(frozen=True)
class Case:
    fault: str  # a FAULTS key, ``<key>x<N>``, or ``refused`` (a closed port)
    stream: bool
    alone: tuple[Any, ...]
    """("ok",) | ("error", SDK exception, status, code) | ("partial", message part)"""
    with_fallback: tuple[Any, ...] = ("ok",)

    @property
    def id(self) -> str:
        return f"{self.fault}-{'stream' if self.stream else 'json'}"


E502 = ("error", openai.InternalServerError, 502, "upstream_error")
E504 = ("error", openai.InternalServerError, 504, "deadline_exceeded")
E429 = ("error", openai.RateLimitError, 429, "upstream_rate_limited")
CASES = [
    Case("ratelimited", False, E429),
    Case("ratelimitedx1", False, ("ok",)),
    Case("e500", False, E502),
    Case("e500x2", False, ("ok",)),
    Case("e503", False, E502),
    Case("e503", True, E502),
    Case(
        "e400",
        False,
        ("error", openai.BadRequestError, 400, None),
        ("error", openai.BadRequestError, 400, None),
    ),
    Case("refused", False, E502),
    Case("refused", True, E502),
    Case("reset", False, E502),
    Case("reset", True, ("partial", "failed"), ("partial", "failed")),
    Case("slowheaders", False, E504),
    Case("slowheaders", True, E504),
    Case("slowbody", False, E504),
    # with a per-attempt timeout, the gap between chunks is bounded by it, well before the deadline
    Case("slowbody", True, ("partial", "deadline"), ("partial", "timed out")),
    Case("malformed", False, E502),
    Case("truncated", True, ("partial", "before [DONE]"), ("partial", "before [DONE]")),
    Case("truncatedearly", True, E502),
    Case("sseerror", True, E502),
    Case("sseerrorx1", True, ("ok",)),
    Case("sseerrorlate", True, ("partial", "model overloaded"), ("partial", "model overloaded")),
]


def routes_yaml(faults: FaultServer, closed_port: int) -> str:
    def base(fault: str) -> str:
        return f"http://127.0.0.1:{closed_port}/v1" if fault == "refused" else faults.url(fault)

    providers = [f"  healthy: {{type: openai, base_url: '{faults.url('ok')}'}}"]
    models = ["  healthy: {provider: healthy, price: {input_per_mtok: 0, output_per_mtok: 0}}"]
    routes = []
    for i, case in enumerate(CASES):
        providers.append(f"  p{i}: {{type: openai, base_url: '{base(case.fault)}'}}")
        # the primary with a fallback gives up on each try early, leaving the fallback time
        providers.append(
            f"  p{i}fb: {{type: openai, base_url: '{base(case.fault)}', timeout_s: {ATTEMPT_S}}}"
        )
        price = "price: {input_per_mtok: 0, output_per_mtok: 0}"
        models += [f"  m{i}: {{provider: p{i}, {price}}}", f"  m{i}fb: {{provider: p{i}fb, {price}}}"]
        routes.append(f"  - {{name: r{i}, match: {{model: c{i}}}, targets: [{{model: m{i}}}]}}")
        fb = f"targets: [{{model: m{i}fb}}], fallbacks: [healthy]"
        routes.append(f"  - {{name: r{i}fb, match: {{model: c{i}fb}}, {fb}}}")
    retry = "{attempts: 3, backoff_initial_s: 0.05, backoff_max_s: 0.2}"
    # breakers stay out of the way here (failures: 100); the next test is about them
    defaults = (
        f"defaults: {{timeout_s: {TIMEOUT_S}, retry: {retry}, breaker: {{failures: 100, reset_s: 30}}}}"
    )
    return "\n".join(["providers:", *providers, "models:", *models, "routes:", *routes, defaults, ""])


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


def run(client: openai.OpenAI, model: str, stream: bool) -> tuple[str, Any]:
    """One request through the SDK: ("ok", served model) | ("error", exc) | ("partial", exc)."""
    messages = [{"role": "user", "content": "hi"}]
    try:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, stream=stream)
    except openai.APIStatusError as exc:
        return "error", exc
    served = raw.headers["x-gateway-model"]
    if not stream:
        assert raw.parse().choices[0].message.content == "Hello there!"
        return "ok", served
    text = []
    try:
        for event in raw.parse():
            text += [c.delta.content or "" for c in event.choices]
    except openai.APIError as exc:
        assert text, "the error came after content"
        return "partial", exc
    assert "".join(text) == "Hello there!"
    return "ok", served


def check(outcome: tuple[str, Any], expected: tuple[Any, ...], primary: str) -> None:
    kind, value = outcome
    assert kind == expected[0], (outcome, expected)
    if kind == "ok":
        assert value in (primary, "healthy")
    elif kind == "error":
        _, exc_type, code_status, code = expected
        assert isinstance(value, exc_type) and value.status_code == code_status, value
        if code is not None:
            assert value.code == code
        if code_status == 429:
            assert value.response.headers["retry-after"] and value.response.headers["retry-after-ms"]
    else:
        assert expected[1] in value.message, value.message


def loop_tasks(gw: Gateway) -> collections.Counter[str]:
    """The gateway loop's tasks, by coroutine name (run on that loop, from this thread)."""
    loop = gw.server.server.servers[0].get_loop()

    async def snapshot() -> collections.Counter[str]:
        me = asyncio.current_task()
        coros = (t.get_coro() for t in asyncio.all_tasks() if t is not me)
        return collections.Counter(getattr(c, "__qualname__", type(c).__name__) for c in coros)

    return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(5)


def pool_size(gw: Gateway) -> int:
    """Upstream connections the gateway's transport holds open."""
    return int(gw.app.state.gateway.shared.transport.open_connections())  # type: ignore[attr-defined]


def settle(condition: Callable[[], bool], within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_fault_matrix(gateway_factory: GatewayFactory, faults: FaultServer) -> None:
    gw = gateway_factory(routes=routes_yaml(faults, free_port()), budgets=BUDGETS)
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0, timeout=30)
    assert run(client, "healthy", False) == ("ok", "healthy")
    assert settle(lambda: "RequestResponseCycle.run_asgi" not in loop_tasks(gw))
    baseline = loop_tasks(gw)
    worst: dict[str, float] = {}
    failures = []
    for i, case in enumerate(CASES):
        for suffix, expected in (("", case.alone), ("fb", case.with_fallback)):
            started = time.perf_counter()
            outcome = run(client, f"c{i}{suffix}", case.stream)
            elapsed = time.perf_counter() - started
            label = f"{case.id}{'+fallback' if suffix else ''}"
            worst[label] = elapsed
            try:
                check(outcome, expected, f"m{i}{suffix}")
            except AssertionError as exc:
                failures.append(f"{label}: {exc}")
            if elapsed > TIMEOUT_S + MARGIN_S:
                failures.append(f"{label}: took {elapsed:.3f}s, deadline {TIMEOUT_S}s")
    print("slowest:", sorted(worst.items(), key=lambda kv: -kv[1])[:5])
    assert not failures, "\n".join(failures)
    client.close()

    # No stray tasks: the loop is back to what it ran before the matrix (requests, streams,
    # settlements and upstream reads all ended).
    assert settle(lambda: loop_tasks(gw) <= baseline), loop_tasks(gw) - baseline
    # No leaked upstream connections: the server holds just the gateway's idle keep-alive ones.
    assert settle(lambda: faults.open == pool_size(gw)), (faults.open, pool_size(gw))
    gw.server.stop()
    assert settle(lambda: faults.open == 0), faults.open


def test_breaker_opens_then_skips_the_deployment_without_calling_it(
    gateway_factory: GatewayFactory, faults: FaultServer
) -> None:
    routes = f"""
providers:
  bad: {{type: openai, base_url: '{faults.url("e500")}'}}
  good: {{type: openai, base_url: '{faults.url("ok")}'}}
models:
  flaky: {{provider: bad}}
  healthy: {{provider: good}}
routes:
  - {{name: alone, match: {{model: alone}}, targets: [{{model: flaky}}]}}
  - {{name: guarded, match: {{model: guarded}}, targets: [{{model: flaky}}], fallbacks: [healthy]}}
defaults:
  timeout_s: 2
  retry: {{attempts: 2, backoff_initial_s: 0.01, backoff_max_s: 0.05}}
  breaker: {{failures: 2, reset_s: 30}}
"""
    gw = gateway_factory(routes=routes, budgets=BUDGETS)
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0, timeout=30)
    before = faults.hits["e500"]
    for _ in range(2):  # each request gives up on 'flaky' after its retries: one breaker failure each
        kind, err = run(client, "alone", False)
        assert kind == "error" and err.status_code == 502
    assert faults.hits["e500"] == before + 4
    assert run(client, "guarded", False) == ("ok", "healthy")
    kind, err = run(client, "alone", False)
    assert kind == "error" and err.status_code == 503 and err.code == "no_healthy_deployment"
    assert err.response.headers["x-should-retry"] == "false"  # it reopens in 30 s: far off
    assert faults.hits["e500"] == before + 4, "an open circuit is not called"
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'gateway_circuit_state{deployment="flaky"} 2.0' in metrics
    assert 'gateway_circuit_state{deployment="healthy"} 0.0' in metrics
    assert "gateway_retries_total 2.0" in metrics and "gateway_fallbacks_total 1.0" in metrics
    client.close()
