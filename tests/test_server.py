"""gateway/server.py: the proxy endpoints served natively, next to uvicorn's ASGI path.

The same gateway is run with ``GatewayHttpProtocol`` (as ``gateway serve`` runs it) and with uvicorn's
plain httptools protocol (every request through ASGI and Starlette); answers must not differ. The
HTTP/1.1 details the native path handles itself are checked on a raw socket.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest
from conftest import KEY_ACME, ROUTES, GatewayFactory

from gateway.server import GatewayHttpProtocol

CHAT = {"model": "mock-chat", "messages": [{"role": "user", "content": "hello there"}]}
VARYING = {"date", "x-request-id"}  # differ from one answer to the next by design


def _answers(base: str) -> list[tuple[int, dict[str, str], Any]]:
    """Status, headers, and body (JSON without ids, or SSE chunks' fields) of a few kinds of answer."""
    auth = {"authorization": f"Bearer {KEY_ACME}"}
    out: list[tuple[int, dict[str, str], Any]] = []
    with httpx.Client(base_url=base, timeout=10) as client:
        asks: list[tuple[dict[str, Any], dict[str, str]]] = [
            (CHAT, auth),
            ({**CHAT, "stream": True, "stream_options": {"include_usage": True}}, auth),
            (CHAT, {"authorization": "Bearer sk-wrong"}),
            ({"model": "mock-chat"}, auth),
            ({**CHAT, "model": "no-such-model"}, auth),
        ]
        for body, headers in asks:
            resp = client.post("/v1/chat/completions", json=body, headers=headers)
            kept = {k: v for k, v in resp.headers.items() if k not in VARYING}
            if resp.headers["content-type"].startswith("text/event-stream"):
                lines = resp.text.splitlines()
                chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
                shape: Any = [sorted(chunk) for chunk in chunks] + [lines[-2:]]
            else:
                data = resp.json()
                shape = {k: v for k, v in data.items() if k not in ("id", "created")}
            out.append((resp.status_code, kept, shape))
    return out


def test_gateway_serve_takes_the_native_path(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn's protocol hook is private API: an upgrade that drops it must fail here, not fall back
    to the ASGI path unnoticed."""
    served: list[str] = []
    serve = GatewayHttpProtocol._serve

    async def spy(self: GatewayHttpProtocol, cycle: Any, endpoint: Any) -> None:
        served.append(endpoint.path)
        await serve(self, cycle, endpoint)

    monkeypatch.setattr(GatewayHttpProtocol, "_serve", spy)
    gw = gateway_factory()
    auth = {"authorization": f"Bearer {KEY_ACME}"}
    assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=auth).status_code == 200
    assert httpx.get(gw.url + "/healthz").status_code == 200  # not proxied: the ASGI app answers
    assert served == ["/v1/chat/completions"]


def test_native_and_asgi_paths_answer_alike(gateway_factory: GatewayFactory) -> None:
    native = _answers(gateway_factory(http=GatewayHttpProtocol).url)
    asgi = _answers(gateway_factory(http="httptools").url)
    assert [status for status, _, _ in native] == [200, 200, 401, 400, 404]
    assert native == asgi


def _connect(url: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def _request(body: bytes, *, key: str = KEY_ACME, extra: str = "", length: int | None = None) -> bytes:
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\ncontent-length: {len(body) if length is None else length}\r\n"
        f"{extra}\r\n"
    )
    return head.encode() + body


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response with a content-length body off ``sock`` (``buffer`` keeps what follows it)."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, "connection closed before a response head"
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        data = sock.recv(65536)
        assert data, "connection closed inside a response body"
        rest += data
    buffer[:] = rest[length:]
    return int(status_line.split()[1]), headers, rest[:length]


BODY = json.dumps(CHAT).encode()


def test_pipelined_requests_are_answered_in_order(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    with _connect(gw.url) as sock:
        sock.sendall(_request(BODY, key="sk-wrong") + _request(BODY) + _request(BODY, key="sk-wrong"))
        buffer = bytearray()
        statuses = [_read_response(sock, buffer)[0] for _ in range(3)]
    assert statuses == [401, 200, 401]


def test_a_body_sent_in_pieces_is_read_whole(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    with _connect(gw.url) as sock:
        whole = _request(BODY)
        sock.sendall(whole[: len(whole) - 20])
        time.sleep(0.1)
        sock.sendall(whole[len(whole) - 20 :])
        status, _, body = _read_response(sock, bytearray())
    assert status == 200
    assert json.loads(body)["object"] == "chat.completion"


def test_a_chunked_body_is_read_whole(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {KEY_ACME}\r\ntransfer-encoding: chunked\r\n\r\n".encode()
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:10], BODY[10:]))
        + b"0\r\n\r\n"
    )
    with _connect(gw.url) as sock:
        sock.sendall(chunked)
        status, _, body = _read_response(sock, bytearray())
    assert status == 200
    assert json.loads(body)["object"] == "chat.completion"


def test_expect_100_continue_is_answered_before_the_body(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    with _connect(gw.url) as sock:
        sock.sendall(_request(b"", extra="expect: 100-continue\r\n", length=len(BODY)))
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(BODY)
        buffer = bytearray(interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :])
        status, _, _ = _read_response(sock, buffer)
    assert status == 200


LIMITED = ROUTES + "defaults: {max_body_bytes: 2048}\n"


def test_a_body_over_the_limit_is_413_declared_or_not(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(routes=LIMITED)
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 4000}]}).encode()
    with _connect(gw.url) as sock:
        sock.sendall(_request(big))  # Content-Length says it: refused before the body is read
        status, _, body = _read_response(sock, bytearray())
    assert status == 413
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {KEY_ACME}\r\ntransfer-encoding: chunked\r\n\r\n".encode()
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (big[:1500], big[1500:3000], big[3000:]))
        + b"0\r\n\r\n"
    )
    with _connect(gw.url) as sock:
        sock.sendall(chunked)  # no length: refused once the bytes read pass the limit
        status, _, _ = _read_response(sock, bytearray())
    assert status == 413


def test_connection_close_is_honoured(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    with _connect(gw.url) as sock:
        sock.sendall(_request(BODY, extra="connection: close\r\n"))
        buffer = bytearray()
        status, headers, _ = _read_response(sock, buffer)
        assert status == 200
        assert headers["connection"] == "close"
        assert sock.recv(65536) == b""  # and the server closed its side


def test_a_client_gone_mid_body_leaves_the_gateway_serving(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway_factory()
    with _connect(gw.url) as sock:
        sock.sendall(_request(BODY[:10], length=len(BODY)))
        time.sleep(0.05)
    time.sleep(0.1)
    with _connect(gw.url) as sock:
        sock.sendall(_request(BODY))
        assert _read_response(sock, bytearray())[0] == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
