"""gateway/limits.py: what a client connection may hold, checked on real sockets against a live gateway.

The time limits are set small (0.5 s) so that each test ends in about a second; every wait is bounded
by a socket timeout or a loop of fixed length, and nothing asserts on speed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import KEY_ACME, Gateway, GatewayFactory

from gateway.limits import ConnectionGuard, connection_cap
from gateway.logs import MAX_LOGGED_CHARS
from gateway.settings import LIMIT_ENV, Settings

FAST = {"header_timeout_s": 0.5, "body_timeout_s": 0.5}
CHAT = {"model": "mock-chat", "messages": [{"role": "user", "content": "hello"}]}


def _connect(gw: Gateway, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.server.port), timeout=timeout)


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a socket timeout, 5 s, fails the test)."""
    out = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def _response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _envelope(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _chat_head(length: int, key: str | None = None) -> bytes:
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        f"{auth}content-length: {length}\r\n\r\n"
    ).encode()


def test_an_idle_connection_is_closed_after_the_header_timeout(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(**FAST)
    with _connect(gw) as sock:
        assert _read_until_closed(sock) == b""  # closed without an answer: nobody asked anything


def test_dripped_headers_get_408_and_a_close(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(**FAST)
    with _connect(gw) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
        answer = b""
        for i in range(50):  # a header every 0.1 s: each arrives in time, the head as a whole does not
            try:
                sock.sendall(b"x-drip-%d: y\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], 0.1)[0]:
                break
        answer = _read_until_closed(sock)
    status, headers, body = _response(answer)
    assert (status, headers["connection"]) == (408, "close")
    assert _envelope(body)["code"] == "request_timeout"
    assert i < 49, "the server let the drip run to its end"


def test_a_dripped_body_gets_408_and_the_log_says_so(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = gateway_factory(**FAST)
    body = json.dumps(CHAT).encode()
    with _connect(gw) as sock:
        sock.sendall(_chat_head(len(body), KEY_ACME) + body[:5])
        for i in range(5, len(body)):  # a byte every 0.1 s: far below the minimum rate
            if select.select([sock], [], [], 0.1)[0]:
                break
            sock.sendall(body[i : i + 1])
        answer = _read_until_closed(sock)
    status, headers, raw = _response(answer)
    assert (status, headers["connection"]) == (408, "close")
    assert _envelope(raw)["code"] == "request_timeout"
    assert i < len(body) - 1, "the server waited for the whole dripped body"
    deadline = time.monotonic() + 5
    while not [r for r in caplog.records if r.name == "gateway.access"] and time.monotonic() < deadline:
        time.sleep(0.02)
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert (line["status"], line["error_code"]) == (408, "request_timeout")


def test_a_slow_but_steady_body_is_read_whole(gateway_factory: GatewayFactory) -> None:
    """The minimum rate extends the body timeout: 2 KB/s for ~1.5 s beats 0.5 s + 1 s per 500 bytes."""
    gw = gateway_factory(**FAST)
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 3000}]}).encode()
    with _connect(gw) as sock:
        sock.sendall(_chat_head(len(body), KEY_ACME))
        for start in range(0, len(body), 200):
            sock.sendall(body[start : start + 200])
            time.sleep(0.1)
        status, _, _ = _response(sock.recv(65536))
    assert status == 200


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_100_mb_header_is_refused_early_with_431(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    before = _rss_kb()
    chunk = b"a" * (1 << 20)
    sent = 0
    with _connect(gw) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: gw\r\nx-big: ")
        for _ in range(100):  # 100 MB, a megabyte at a time, until the server answers
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            if select.select([sock], [], [], 0)[0]:
                break
        else:
            sock.sendall(b"\r\n\r\n")
        answer = _read_until_closed(sock)
    status, headers, body = _response(answer)
    assert (status, headers["connection"]) == (431, "close")
    assert _envelope(body)["code"] == "headers_too_large"
    assert sent <= 16 << 20, f"{sent >> 20} MB read before the refusal"
    grown_mb = (_rss_kb() - before) / 1024
    print(f"\n100 MB header: refused after {sent >> 20} MB sent; RSS grew {grown_mb:.1f} MB")
    assert grown_mb < 64


def _head_with(headers: list[bytes]) -> bytes:
    return b"GET /healthz HTTP/1.1\r\nhost: gw\r\n" + b"".join(headers) + b"\r\n"


@pytest.mark.parametrize("count", [101, 10_000])
def test_too_many_headers_get_431(gateway_factory: GatewayFactory, count: int) -> None:
    gw = gateway_factory()
    with _connect(gw) as sock:
        # refused while sending: the answer is there to read all the same
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(_head_with([b"x-h-%d: v\r\n" % i for i in range(count)]))
        status, headers, body = _response(_read_until_closed(sock))
    assert (status, headers["connection"]) == (431, "close")
    assert _envelope(body)["code"] == "headers_too_large"


def test_headers_within_the_limits_are_served(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    headers = {f"x-h-{i}": "v" * 500 for i in range(90)}  # 90 headers, ~46 KB
    assert httpx.get(gw.url + "/healthz", headers=headers).status_code == 200


def test_a_long_url_gets_414_in_the_openai_envelope(gateway_factory: GatewayFactory) -> None:
    """The issue's key with a ~70 KB id: its DELETE got uvicorn's plain-text 400."""
    gw = gateway_factory()
    with _connect(gw) as sock:
        sock.sendall(b"DELETE /admin/keys/" + b"k" * 70_000 + b" HTTP/1.1\r\nhost: gw\r\n\r\n")
        status, headers, body = _response(_read_until_closed(sock))
    assert (status, headers["connection"], headers["content-type"]) == (414, "close", "application/json")
    error = _envelope(body)
    assert error["code"] == "url_too_long"
    assert "16384" in error["message"]


def test_connections_past_the_cap_get_503_when_every_slot_has_a_request(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(max_connections=5)
    held = [_connect(gw) for _ in range(5)]
    try:
        for sock in held:  # each a request past its headers, its body on the way: not to be closed
            sock.sendall(_chat_head(1000, KEY_ACME))
        with _connect(gw) as sock:
            status, headers, body = _response(_read_until_closed(sock))
        assert (status, headers["connection"], headers["retry-after"]) == (503, "close", "1")
        assert _envelope(body)["code"] == "too_many_connections"
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5  # the server notices the held ones closing: room again
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(gw.url + "/healthz").status_code == 200:
                break
        assert time.monotonic() < deadline, "no room after the held connections closed"
        time.sleep(0.05)


def test_at_the_cap_the_oldest_idle_connection_makes_room_for_a_new_one(
    gateway_factory: GatewayFactory,
) -> None:
    """Keyless clients that hold every slot without a request do not lock a keyed client out."""
    gw = gateway_factory(max_connections=5)
    idle = [_connect(gw) for _ in range(4)]
    dripping = _connect(gw)
    dripping.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")  # part of a head
    newcomers: list[httpx.Client] = []
    try:
        for _ in range(5):  # each on a new connection, kept open: each takes the oldest idle one's slot
            newcomers.append(httpx.Client(base_url=gw.base_url, timeout=5))
            client = openai.OpenAI(api_key=KEY_ACME, base_url=gw.base_url, http_client=newcomers[-1])
            reply = client.chat.completions.create(
                model="mock-chat", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
        assert [_read_until_closed(sock) for sock in idle] == [b""] * 4  # closed without a word
        status, headers, body = _response(_read_until_closed(dripping))  # it had begun a request
        assert (status, headers["connection"]) == (503, "close")
        assert _envelope(body)["code"] == "too_many_connections"
    finally:
        for sock in [*idle, dripping]:
            sock.close()
        for http in newcomers:
            http.close()


class Slowloris:
    """Keeps ``count`` keyless connections open on a thread: a third idle, a third dripping headers, a
    third dripping a declared body; whichever the server closes is opened again. Counts the closes."""

    def __init__(self, gw: Gateway, count: int) -> None:
        self.gw, self.count = gw, count
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int) -> socket.socket:
        sock = _connect(self.gw)
        sock.setblocking(False)
        if i % 3 == 1:
            sock.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
        elif i % 3 == 2:
            sock.send(_chat_head(100_000))
        return sock

    def _run(self) -> None:
        socks = {i: self._open(i) for i in range(self.count)}
        while not self._stop.is_set():
            readable, _, _ = select.select(list(socks.values()), [], [], 0.05)
            for sock in readable:
                i = next(k for k, v in socks.items() if v is sock)
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data or b"connection: close" in data:
                    self.closed_by_server += 1
                    sock.close()
                    socks[i] = self._open(i)
            for i, sock in socks.items():  # a byte per connection per turn: a drip, not an upload
                if i % 3:
                    with contextlib.suppress(OSError):  # closed by the server: select reports it next turn
                        sock.send(b"x" if i % 3 == 2 else b"x-a: b\r\n")
        for sock in socks.values():
            sock.close()

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def slowloris(gateway_factory: GatewayFactory) -> Iterator[tuple[Gateway, Slowloris]]:
    gw = gateway_factory(**FAST)
    with Slowloris(gw, 300) as attack:
        yield gw, attack


def test_a_keyed_client_is_served_while_keyless_connections_are_held(
    slowloris: tuple[Gateway, Slowloris],
) -> None:
    gw, attack = slowloris
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0, timeout=5)
    started = time.monotonic()
    for _ in range(10):
        reply = client.chat.completions.create(
            model="mock-chat", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
    while attack.closed_by_server < 300 and time.monotonic() - started < 5:  # bounded: ~1 s expected
        time.sleep(0.05)
    print(f"\n300 keyless connections held; {attack.closed_by_server} closed by the server meanwhile")
    assert attack.closed_by_server >= 300  # the limits reclaim what keyless clients hold


def test_client_strings_in_the_access_log_are_clipped(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A keyless 9 MB ``model`` and a 60 KB trace header made a 9 MB log line on the 401."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = gateway_factory()
    body = json.dumps({"model": "m" * 9_000_000, "messages": [{"role": "user", "content": "hi"}]})
    headers = {"x-gateway-trace": "t" * 60_000, "content-type": "application/json"}
    resp = httpx.post(gw.url + "/v1/chat/completions", content=body, headers=headers, timeout=30)
    assert resp.status_code == 401
    deadline = time.monotonic() + 5
    while not [r for r in caplog.records if r.name == "gateway.access"] and time.monotonic() < deadline:
        time.sleep(0.02)
    (record,) = [r for r in caplog.records if r.name == "gateway.access"]
    line = record.getMessage()
    print(f"\naccess log line: {len(line)} characters")
    assert len(line) < 4 * MAX_LOGGED_CHARS + 1000
    fields = json.loads(line)
    assert fields["model_requested"] == "m" * MAX_LOGGED_CHARS + "…[+8999744 chars]"
    assert fields["trace"].endswith("…[+59744 chars]")


def test_a_malformed_request_gets_400_in_the_openai_envelope(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    with _connect(gw) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
        status, headers, body = _response(_read_until_closed(sock))
    assert (status, headers["connection"]) == (400, "close")
    assert _envelope(body)["type"] == "invalid_request_error"


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(keepalive_timeout_s=0.2, header_timeout_s=30)
    with _connect(gw, timeout=3) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        answer = _read_until_closed(sock)  # the answer, then the close well before the header timeout
    assert _response(answer)[0] == 200


def test_the_limits_are_settings_from_the_environment() -> None:
    env = {
        "GATEWAY_HEADER_TIMEOUT_S": "2.5",
        "GATEWAY_BODY_TIMEOUT_S": "7",
        "GATEWAY_BODY_MIN_RATE": "100",
        "GATEWAY_KEEPALIVE_TIMEOUT_S": "1",
        "GATEWAY_MAX_HEADER_BYTES": "1000",
        "GATEWAY_MAX_HEADERS": "10",
        "GATEWAY_MAX_URL_BYTES": "500",
        "GATEWAY_MAX_CONNECTIONS": "42",
    }
    settings = Settings.from_env(env)
    assert (settings.header_timeout_s, settings.body_timeout_s, settings.body_min_rate) == (2.5, 7.0, 100)
    assert (settings.keepalive_timeout_s, settings.max_header_bytes, settings.max_headers) == (1.0, 1000, 10)
    assert (settings.max_url_bytes, settings.max_connections) == (500, 42)
    assert Settings.from_env(settings.to_env()) == settings  # as the workers get them
    # unset, each limit has its default (the state file's default is a path: gateway/settings.py)
    unset = Settings.from_env({})
    assert all(getattr(unset, name) == getattr(Settings(), name) for name in LIMIT_ENV)


def test_the_connection_cap_keeps_half_the_open_files_for_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert connection_cap(10_000) == 512
    assert connection_cap(100) == 100
    assert ConnectionGuard(Settings(max_connections=10_000)).max_connections == 512
