"""FastTransport against real loopback servers: keep-alive, streaming, closing, timeouts and failures."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import free_port

from gateway.errors import UpstreamStatusError
from gateway.providers import http
from gateway.transport import FastTransport, ResponseTooLarge


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
Start = Callable[[Handler], Awaitable["Upstream"]]


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *fields = head.decode("latin-1").split("\r\n")[:-2]
    method, path, _ = line.split(" ")
    headers = {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readexactly(2)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


@dataclass
class Upstream:
    """A loopback HTTP/1.1 server: ``handler`` answers each request and says whether to keep the socket."""

    handler: Handler
    accepted: int = 0
    open: int = 0
    peak: int = 0
    requests: list[Request] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            while (request := await read_request(reader)) is not None:
                self.requests.append(request)
                if not await self.handler(request, reader, writer):
                    break
        except ConnectionError:
            pass  # the client went away mid-answer: what some tests do on purpose
        finally:
            self.open -= 1
            writer.close()
            self.closed.set()


@pytest.fixture
async def upstream() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Upstream:
        up = Upstream(handler)
        up.server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
        servers.append(up.server)
        return up

    yield start
    for server in servers:
        server.close()


def response(body: bytes, *, status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def echo(request: Request, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    payload = {"method": request.method, "path": request.path, "headers": request.headers}
    payload["body"] = request.body.decode()
    writer.write(response(orjson.dumps(payload), extra="content-type: application/json\r\n"))
    return True


STREAM_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def held_stream(release: asyncio.Event) -> Handler:
    """A stream whose first event goes out at once and the rest once ``release`` is set."""

    async def held(_q: Request, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await release.wait()
        writer.write(chunk(b"data: 2\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return True

    return held


async def endless_stream(_q: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """One event, then the stream held open until the client goes away."""
    writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
    assert await reader.read() == b""
    return False


async def cut_stream(_q: Request, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """One event, then the connection closed mid-body."""
    writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
    await writer.drain()
    return False


async def test_json_post_round_trip(upstream: Start) -> None:
    up = await upstream(echo)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        resp = await client.post(f"{up.url}/v1/chat?x=1", json={"model": "m"}, headers={"x-k": "v"})
    assert resp.status_code == 200
    assert resp.http_version == "HTTP/1.1"
    got = resp.json()
    assert got["method"] == "POST"
    assert got["path"] == "/v1/chat?x=1"
    assert orjson.loads(got["body"]) == {"model": "m"}
    assert got["headers"]["x-k"] == "v"
    assert got["headers"]["host"] == up.url.removeprefix("http://")
    assert got["headers"]["content-length"] == str(len(got["body"]))


async def test_keep_alive_reuses_one_connection(upstream: Start) -> None:
    up = await upstream(echo)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        for i in range(50):
            resp = await client.post(up.url, content=b"n%d" % i)
            assert resp.json()["body"] == f"n{i}"
    assert up.accepted == 1


async def test_chunked_stream_arrives_as_sent(upstream: Start) -> None:
    release = asyncio.Event()
    up = await upstream(held_stream(release))
    async with (
        httpx.AsyncClient(transport=FastTransport()) as client,
        client.stream("POST", up.url, content=b"{}") as resp,
    ):
        parts = resp.aiter_raw()
        assert await asyncio.wait_for(anext(parts), 1.0) == b"data: 1\n\n"
        release.set()
        assert b"".join([p async for p in parts]) == b"data: 2\n\ndata: [DONE]\n\n"
        again = await client.get(up.url)  # the finished stream gave its connection back
    assert again.status_code == 200
    assert up.accepted == 1


async def test_aclose_mid_stream_closes_the_connection(
    upstream: Start,
) -> None:
    up = await upstream(endless_stream)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        async with client.stream("POST", up.url, content=b"{}") as resp:
            async for _ in resp.aiter_raw():
                break
        await asyncio.wait_for(up.closed.wait(), 1.0)
        assert up.open == 0
        up.handler = echo
        assert (await client.get(up.url)).status_code == 200
    assert up.accepted == 2  # the closed stream's connection was not reused


async def test_large_content_length_body(upstream: Start) -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB: past the read buffer's high-water mark

    async def big(_q: Request, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(response(blob))
        return True

    up = await upstream(big)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        async with client.stream("GET", up.url) as resp:
            got = b""
            async for part in resp.aiter_raw():
                got += part
                await asyncio.sleep(0)  # a slow reader, so the socket gets paused
        assert got == blob
        assert (await client.get(up.url)).content == blob
    assert up.accepted == 1


async def test_body_delimited_by_close(upstream: Start) -> None:
    async def legacy(_q: Request, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        return False

    up = await upstream(legacy)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        assert (await client.get(up.url)).content == b"until the end"
        assert (await client.get(up.url)).content == b"until the end"
    assert up.accepted == 2


async def test_gzip_and_interim_responses(upstream: Start) -> None:
    async def zipped(_q: Request, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(response(gzip.compress(b'{"ok": true}'), extra="content-encoding: gzip\r\n"))
        return True

    up = await upstream(zipped)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        resp = await client.get(up.url)
        assert resp.status_code == 200
        assert resp.json() == {"ok": True}
        assert (await client.get(up.url)).json() == {"ok": True}
    assert up.accepted == 1


async def test_async_iterator_body_is_sent_chunked(upstream: Start) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"

    up = await upstream(echo)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        resp = await client.post(up.url, content=parts())
    assert resp.json()["body"] == "hello world"
    assert up.requests[0].headers["transfer-encoding"] == "chunked"


async def test_connection_refused_is_connect_error() -> None:
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{free_port()}/")


async def test_slow_answer_is_read_timeout(upstream: Start) -> None:
    async def slow(_q: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await reader.read()
        return False

    up = await upstream(slow)
    async with httpx.AsyncClient(transport=FastTransport(), timeout=httpx.Timeout(5.0, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(up.url)
        await asyncio.wait_for(up.closed.wait(), 1.0)  # the abandoned connection was closed


async def test_stalled_body_is_read_timeout(upstream: Start) -> None:
    async def stalls(_q: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
        await reader.read()
        return False

    up = await upstream(stalls)
    async with httpx.AsyncClient(transport=FastTransport(), timeout=httpx.Timeout(5.0, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(up.url)


async def test_close_mid_body_raises_from_the_stream(
    upstream: Start,
) -> None:
    up = await upstream(cut_stream)
    got = []
    async with (
        httpx.AsyncClient(transport=FastTransport()) as client,
        client.stream("POST", up.url, content=b"{}") as resp,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            async for part in resp.aiter_bytes():
                got.append(part)
    assert got == [b"data: 1\n\n"]


async def test_malformed_response_is_protocol_error(upstream: Start) -> None:
    async def garbage(_q: Request, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 OK 200\r\n\r\n")
        return True

    up = await upstream(garbage)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(up.url)


async def test_header_injection_is_refused(upstream: Start) -> None:
    up = await upstream(echo)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.get(up.url, headers={"x-a": "b\r\nx-smuggled: 1"})
    assert up.requests == []


async def test_idle_connection_closed_by_server(upstream: Start) -> None:
    async def once(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await echo(request, reader, writer)
        await writer.drain()
        return False  # keep-alive announced, then the idle socket is closed anyway

    up = await upstream(once)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        assert (await client.get(up.url)).status_code == 200
        await asyncio.wait_for(up.closed.wait(), 1.0)
        await asyncio.sleep(0.05)
        assert (await client.get(up.url)).status_code == 200
    assert up.accepted == 2


async def test_stale_connection_is_retried_once(upstream: Start) -> None:
    served: dict[asyncio.StreamWriter, int] = {}

    async def racy(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        n = served[writer] = served.get(writer, 0) + 1
        if n == 2 and len(served) == 1:  # the close raced the next request: read, never answered
            return False
        return await echo(request, reader, writer)

    up = await upstream(racy)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        for i in range(3):
            assert (await client.post(up.url, content=b"%d" % i)).json()["body"] == str(i)
    assert up.accepted == 2


async def test_fresh_connection_closed_unanswered_is_an_error(
    upstream: Start,
) -> None:
    async def hangs_up(_q: Request, _r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> bool:
        return False

    up = await upstream(hangs_up)
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(up.url)
    assert up.accepted == 1  # not retried: the connection was new


async def test_concurrency_is_bounded_by_the_pool(upstream: Start) -> None:
    async def slow_echo(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.01)
        return await echo(request, reader, writer)

    up = await upstream(slow_echo)
    async with httpx.AsyncClient(transport=FastTransport(max_connections=8)) as client:
        resps = await asyncio.gather(*(client.post(up.url, content=b"%d" % i) for i in range(64)))
    assert [r.json()["body"] for r in resps] == [str(i) for i in range(64)]
    assert up.accepted <= 8
    assert up.peak <= 8


async def test_pool_wait_times_out(upstream: Start) -> None:
    async def endless(_q: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await reader.read()
        return False

    up = await upstream(endless)
    timeout = httpx.Timeout(5.0, pool=0.1)
    async with (
        httpx.AsyncClient(transport=FastTransport(max_connections=1), timeout=timeout) as client,
        client.stream("GET", up.url),
    ):
        with pytest.raises(httpx.PoolTimeout):
            await client.get(up.url)


async def test_no_connection_outlives_aclose(upstream: Start) -> None:
    async def slow_echo(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.01)
        return await echo(request, reader, writer)

    up = await upstream(slow_echo)
    client = httpx.AsyncClient(transport=FastTransport(max_connections=16))
    await asyncio.gather(*(client.get(up.url) for _ in range(32)))
    open_stream = await client.send(client.build_request("GET", up.url), stream=True)
    assert up.open > 1
    await client.aclose()
    await open_stream.aclose()
    for _ in range(100):
        if up.open == 0:
            break
        await asyncio.sleep(0.01)
    assert up.open == 0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_round_trip(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    up = Upstream(echo)
    up.server = await asyncio.start_server(up.serve, "127.0.0.1", 0, ssl=server_ctx)
    port = up.server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    try:
        async with httpx.AsyncClient(transport=FastTransport(ssl_context=client_ctx)) as client:
            for _ in range(3):
                resp = await client.post(f"https://localhost:{port}/v1", content=b"secret")
                assert resp.json()["body"] == "secret"
        async with httpx.AsyncClient(transport=FastTransport()) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(f"https://localhost:{port}/")
    finally:
        up.server.close()
    assert up.accepted == 1  # one kept-alive connection; the refused handshake never got this far


async def test_shorter_read_timeout_on_a_reused_connection(upstream: Start) -> None:
    async def second_is_slow(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if len(up.requests) == 2:
            await reader.read()
            return False
        return await echo(request, reader, writer)

    up = await upstream(second_is_slow)
    async with httpx.AsyncClient(transport=FastTransport(), timeout=60.0) as client:
        assert (await client.get(up.url)).status_code == 200
        started = asyncio.get_running_loop().time()
        with pytest.raises(httpx.ReadTimeout):
            await client.get(up.url, timeout=httpx.Timeout(60.0, read=0.2))
        assert asyncio.get_running_loop().time() - started < 1.0
    assert up.accepted == 1


async def test_idle_connections_expire_and_are_bounded(upstream: Start) -> None:
    up = await upstream(echo)
    transport = FastTransport(max_idle=2, keepalive_expiry=0.1)
    async with httpx.AsyncClient(transport=transport) as client:
        await asyncio.gather(*(client.get(up.url) for _ in range(4)))
        assert up.accepted == 4
        await asyncio.sleep(0.05)
        assert up.open == 2  # two were closed rather than kept idle
        await asyncio.sleep(0.15)
        assert (await client.get(up.url)).status_code == 200
        assert up.accepted == 5  # the idle ones had expired
        await asyncio.sleep(0.05)
        assert up.open == 1


# -- fetch: the short path for whole answers (gateway/providers/http.py uses it) --------------------------


async def test_fetch_sends_what_httpx_would_and_keeps_the_connection(upstream: Start) -> None:
    up = await upstream(echo)
    transport = FastTransport()
    try:
        url = httpx.URL(f"{up.url}/v1/chat?x=1")
        for i in range(3):
            status, headers, body = await transport.fetch(url, [(b"x-k", b"v")], b'{"n":%d}' % i, 2.0)
            assert status == 200 and (b"content-type", b"application/json") in headers
            got = orjson.loads(body)
            assert (got["method"], got["path"], got["body"]) == ("POST", "/v1/chat?x=1", f'{{"n":{i}}}')
            assert got["headers"]["host"] == up.url.removeprefix("http://")
            assert got["headers"]["content-length"] == str(len(got["body"]))
            assert got["headers"]["x-k"] == "v"
        assert up.accepted == 1
    finally:
        await transport.aclose()


async def test_fetch_reads_chunked_and_interim_answers_and_raises_httpx_errors(upstream: Start) -> None:
    async def chunked(_q: Request, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(chunk(b'{"error":') + chunk(b'"busy"}') + b"0\r\n\r\n")
        return True

    async def silent(_q: Request, reader: asyncio.StreamReader, _w: asyncio.StreamWriter) -> bool:
        await reader.read()
        return False

    transport = FastTransport()
    try:
        up = await upstream(chunked)
        status, _, body = await transport.fetch(httpx.URL(up.url), [], b"{}", 2.0)
        assert (status, body) == (503, b'{"error":"busy"}')
        slow = await upstream(silent)
        with pytest.raises(httpx.ReadTimeout):
            await transport.fetch(httpx.URL(slow.url), [], b"{}", 0.2)
        with pytest.raises(httpx.LocalProtocolError):
            await transport.fetch(httpx.URL(up.url), [(b"x", b"a\r\nevil: 1")], b"{}", 2.0)
        with pytest.raises(httpx.ConnectError):
            await transport.fetch(httpx.URL(f"http://127.0.0.1:{free_port()}"), [], b"{}", 2.0)
    finally:
        await transport.aclose()


async def test_fetch_retries_a_stale_keep_alive_connection_once(upstream: Start) -> None:
    served: dict[asyncio.StreamWriter, int] = {}

    async def racy(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        n = served[writer] = served.get(writer, 0) + 1
        if n == 2 and len(served) == 1:
            return False
        return await echo(request, reader, writer)

    up = await upstream(racy)
    transport = FastTransport()
    try:
        for i in range(3):
            _, _, body = await transport.fetch(httpx.URL(up.url), [], b"%d" % i, 2.0)
            assert orjson.loads(body)["body"] == str(i)
        assert up.accepted == 2
    finally:
        await transport.aclose()


# -- open: the short path for streamed answers (gateway/providers/http.py uses it) ------------------------


@pytest.fixture
async def transport() -> AsyncIterator[FastTransport]:
    fast = FastTransport()
    yield fast
    await fast.aclose()


async def test_open_hands_chunks_over_as_sent_and_gives_the_connection_back(
    upstream: Start, transport: FastTransport
) -> None:
    release = asyncio.Event()
    up = await upstream(held_stream(release))
    url = httpx.URL(f"{up.url}/v1/chat?x=1")
    resp = await transport.open(url, [(b"x-k", b"v")], b'{"stream":true}', 2.0)
    assert resp.status_code == 200 and (b"transfer-encoding", b"chunked") in resp.headers
    parts = resp.aiter_bytes()
    assert await asyncio.wait_for(anext(parts), 1.0) == b"data: 1\n\n"  # the rest is still held
    release.set()
    assert b"".join([p async for p in parts]) == b"data: 2\n\ndata: [DONE]\n\n"
    await resp.aclose()
    again = await transport.open(url, [], b"{}", 2.0)  # on the connection the first one gave back
    assert await again.aread() == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
    await again.aclose()
    sent = up.requests[0]
    assert (sent.method, sent.path, sent.body) == ("POST", "/v1/chat?x=1", b'{"stream":true}')
    assert sent.headers["host"] == up.url.removeprefix("http://")
    assert sent.headers["content-length"] == "15" and sent.headers["x-k"] == "v"
    assert up.accepted == 1 and transport.open_connections() == 1


async def test_open_closed_early_closes_the_connection(upstream: Start, transport: FastTransport) -> None:
    up = await upstream(endless_stream)
    resp = await transport.open(httpx.URL(up.url), [], b"{}", 2.0)
    assert await anext(resp.aiter_bytes()) == b"data: 1\n\n"
    await resp.aclose()
    await resp.aclose()  # twice is harmless
    await asyncio.wait_for(up.closed.wait(), 1.0)
    assert up.open == 0 and transport.open_connections() == 0


async def test_open_raises_httpx_errors_from_the_stream(upstream: Start, transport: FastTransport) -> None:
    async def silent(_q: Request, reader: asyncio.StreamReader, _w: asyncio.StreamWriter) -> bool:
        await reader.read()
        return False

    got = []
    resp = await transport.open(httpx.URL((await upstream(cut_stream)).url), [], b"{}", 2.0)
    with pytest.raises(httpx.RemoteProtocolError):
        async for part in resp.aiter_bytes():
            got.append(part)
    assert got == [b"data: 1\n\n"]
    await resp.aclose()
    resp = await transport.open(httpx.URL((await upstream(endless_stream)).url), [], b"{}", 0.2)
    with pytest.raises(httpx.ReadTimeout):
        await resp.aread()
    await resp.aclose()
    with pytest.raises(httpx.ReadTimeout):  # no head at all
        await transport.open(httpx.URL((await upstream(silent)).url), [], b"{}", 0.2)
    assert transport.open_connections() == 0


async def test_open_stream_decodes_compressed_bodies_and_maps_error_answers(
    upstream: Start, transport: FastTransport
) -> None:
    async def answers(request: Request, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.path == "/zipped":
            zipped = gzip.compress(b"data: 1\n\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(chunk(zipped[:5]) + chunk(zipped[5:]) + b"0\r\n\r\n")
        else:
            writer.write(
                response(b'{"error":{"message":"slow down"}}', status="429 Busy", extra="Retry-After: 3\r\n")
            )
        return True

    up = await upstream(answers)

    def open_stream(path: str) -> Awaitable[http.OpenResponse]:
        return http.open_stream(transport, "p", up.url + path, body={}, headers={"x-k": "v"}, timeout_s=2.0)

    resp = await open_stream("/zipped")
    assert b"".join([part async for part in resp.aiter_bytes()]) == b"data: 1\n\n"
    await resp.aclose()
    with pytest.raises(UpstreamStatusError) as caught:
        await open_stream("/busy")
    assert (caught.value.status, caught.value.retry_after) == (429, "3")
    assert "slow down" in str(caught.value)
    assert up.requests[0].headers["user-agent"] == http.USER_AGENT
    assert up.accepted == 1  # both answers were read to the end: one connection throughout


async def test_fetch_stops_reading_at_its_limits_and_closes_the_connection(upstream: Start) -> None:
    """issue 16: a body past ``max_bytes`` is refused, an error body past ``max_error_bytes`` cut; the
    rest is never read (the connection is closed) and the server sees the gateway hang up."""
    sent = {"n": 0}

    async def endless(q: Request, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        status = "500 Oops" if q.path == "/error" else "200 OK"
        writer.write(f"HTTP/1.1 {status}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
        block = chunk(b"z" * 65536)
        for _ in range(20_000):  # 1.3 GB, were it all read
            writer.write(block)
            await writer.drain()
            sent["n"] += 65536
        return False

    up = await upstream(endless)
    transport = FastTransport()
    try:
        with pytest.raises(ResponseTooLarge):
            await transport.fetch(httpx.URL(up.url + "/ok"), [], b"{}", 5.0, max_bytes=1_000_000)
        status, _, body = await transport.fetch(
            httpx.URL(up.url + "/error"), [], b"{}", 5.0, max_error_bytes=5000
        )
        assert (status, body) == (500, b"z" * 5000)
        await asyncio.wait_for(up.closed.wait(), 5)
        assert transport.open_connections() == 0
        assert sent["n"] < 40 * 1024 * 1024, sent["n"]
        mapped = http.map_transport_error(ResponseTooLarge(1000), "p")
        assert (mapped.status, mapped.code) == (502, "upstream_too_large")
    finally:
        await transport.aclose()
