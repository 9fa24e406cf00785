"""Streaming is real pass-through: first chunk early, error frames, upstream closed on disconnect."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from conftest import BUDGETS, KEY_ACME, ROUTES, GatewayFactory
from upstreams import FakeOpenAI

from gateway.server import GatewayHttpProtocol

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
AUTH = {"authorization": f"Bearer {KEY_ACME}"}


def test_first_chunk_arrives_while_upstream_holds_the_rest(gateway_factory: GatewayFactory) -> None:
    upstream = FakeOpenAI()
    upstream.gate = threading.Event()
    gw = gateway_factory(transport=upstream.transport)
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=BODY, headers=AUTH, timeout=5) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(lines)
        assert first.startswith("data: ") and '"role":"assistant"' in first.replace(" ", "")
        assert not upstream.gate.is_set(), "the first chunk came through while the upstream held the rest"
        upstream.gate.set()
        rest = list(lines)
    assert "data: [DONE]" in rest


class HoldingUpstream:
    """A real HTTP upstream on loopback: sends one SSE chunk, then holds until the peer closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.peer_closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            lengths = (
                ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")
            )
            length = int(next(lengths))
            while len(rest) < length:
                rest += conn.recv(65536)
            chunk = (
                b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
                b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n'
            )
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            conn.settimeout(10)
            try:
                while conn.recv(1024):
                    continue
            except ConnectionResetError:
                self.peer_closed.set()  # a reset is a close too
            except TimeoutError:
                return  # still open after 10 s: the test's wait fails and says so
            self.peer_closed.set()


# the native path (gateway serve) and the ASGI path (any ASGI server) each notice the client leave
@pytest.mark.parametrize("http", [GatewayHttpProtocol, "httptools"], ids=["native", "asgi"])
def test_client_disconnect_closes_the_upstream_connection(
    gateway_factory: GatewayFactory, http: type[GatewayHttpProtocol] | str
) -> None:
    upstream = HoldingUpstream()
    routes = ROUTES.replace("http://upstream.test/v1", f"http://127.0.0.1:{upstream.port}/v1")
    gw = gateway_factory(routes=routes, budgets=BUDGETS, http=http)
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=BODY, headers=AUTH, timeout=5) as r:
        first = next(r.iter_lines())
        assert "Hi" in first
    # The client hung up while the upstream was still holding the stream open.
    assert upstream.peer_closed.wait(5), "the gateway kept the upstream connection open"
    time.sleep(0.1)
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'status="499"' in metrics
