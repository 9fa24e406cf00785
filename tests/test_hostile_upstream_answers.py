"""Hostile upstreams against a gateway process (issue 16): memory, bytes read and time stay bounded.

The gateway runs as ``python -m gateway serve`` (one worker, the in-process store) in front of
``hostile_upstream.HostileUpstream``; each request is watched from outside: the serving process's
VmRSS is sampled every few milliseconds, and a request whose gateway passes ``RSS_LIMIT_MB`` is
failed at once (the process is killed, so an unbounded gateway cannot take the machine down with it).
The upstream stops by itself after a few GB, and every client call has a timeout, so each test is
bounded in bytes and time whatever the gateway does.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from conftest import BUDGETS, KEY_ACME, free_port
from hostile_upstream import MB, HostileUpstream

T = TypeVar("T")

RSS_LIMIT_MB = 300
"""Generous: the gateway idles near 100 MB; an unbounded one passes this within a second here."""
ROUTE_TIMEOUT_S = 2.0  # the ``paced`` route's deadline (the slow-client test)
MODES = ("normal", "huge", "endless", "huge_error", "gzip_bomb", "endless_sse", "noline", "paced")


def routes_yaml(hostile: HostileUpstream) -> str:
    price = "price: {input_per_mtok: 1, output_per_mtok: 1}"
    providers = [f"  p_{m}: {{type: openai, base_url: '{hostile.url(m)}'}}" for m in MODES]
    models = [f"  {m}: {{provider: p_{m}, {price}}}" for m in MODES]
    return "\n".join(
        [
            "providers:",
            *providers,
            "models:",
            *models,
            "routes:",
            "  - {name: slow, match: {model: paced}, targets: [{model: paced}], timeout_s: "
            + f"{ROUTE_TIMEOUT_S}}}",
            "defaults: {timeout_s: 30, retry: {attempts: 1}}",
            "",
        ]
    )


class GatewayProcess:
    """``python -m gateway serve`` with one worker: the process that serves is the one watched."""

    def __init__(self, tmp: Path, hostile: HostileUpstream) -> None:
        self.tmp = tmp
        (tmp / "routes.yaml").write_text(routes_yaml(hostile))
        (tmp / "budgets.yaml").write_text(BUDGETS)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ensure(self) -> GatewayProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_REDIS_URL", "GATEWAY_WORKERS")}
        cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(self.port)]
        cmd += ["--routes", str(self.tmp / "routes.yaml"), "--budgets", str(self.tmp / "budgets.yaml")]
        log = (self.tmp / "gateway.log").open("ab")
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.tmp / "gateway.log").read_text()[-2000:])
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.05)
        raise RuntimeError("gateway not ready")

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def watch(self, call: Callable[[], T], timeout_s: float = 30) -> tuple[T, float]:
        """Run ``call`` (a client request) while sampling the gateway's RSS: (its result, peak MB).
        Past ``RSS_LIMIT_MB`` the gateway is killed and the test fails."""
        peak = self.rss_mb()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(call)
            deadline = time.monotonic() + timeout_s
            while not future.done():
                try:
                    peak = max(peak, self.rss_mb())
                except FileNotFoundError:
                    break  # the gateway died
                if peak > RSS_LIMIT_MB:
                    self.kill()
                    future.cancel()
                    pytest.fail(f"the gateway's RSS reached {peak:.0f} MB (limit {RSS_LIMIT_MB} MB)")
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(f"the request took more than {timeout_s}s")
                time.sleep(0.005)
            return future.result(), peak


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    server = HostileUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, hostile: HostileUpstream) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("hostile"), hostile)
    yield gw
    gw.kill()


def chat(gw: GatewayProcess, model: str, timeout_s: float = 20) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {KEY_ACME}"}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=timeout_s)


def stream(gw: GatewayProcess, model: str, timeout_s: float = 20) -> tuple[int, int, list[bytes]]:
    """A streamed request read to its end without keeping it: (status, bytes, the last few events)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"authorization": f"Bearer {KEY_ACME}"}
    total, tail = 0, b""
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=timeout_s
    ) as resp:
        for part in resp.iter_raw():
            total += len(part)
            tail = (tail + part)[-4096:]
        return resp.status_code, total, [e for e in tail.split(b"\n\n") if e.strip()][-3:]


def settled_rss(gw: GatewayProcess, below_mb: float, within_s: float = 3.0) -> float:
    """The RSS once the request's memory was given back (or the last sample if it never fell below)."""
    deadline = time.monotonic() + within_s
    rss = gw.rss_mb()
    while rss >= below_mb and time.monotonic() < deadline:
        time.sleep(0.05)
        rss = gw.rss_mb()
    return rss


def error_of(resp: httpx.Response) -> dict[str, Any]:
    err = orjson.loads(resp.content)["error"]
    assert isinstance(err, dict)
    return err


def test_a_normal_answer_passes(gateway: GatewayProcess) -> None:
    gw = gateway.ensure()
    resp, _ = gw.watch(lambda: chat(gw, "normal"))
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "Hello there!"
    status, _, events = gw.watch(lambda: stream(gw, "normal"))[0]
    assert status == 200 and events[-1] == b"data: [DONE]"


@pytest.mark.parametrize("mode", ["huge", "endless"])
def test_an_answer_past_the_body_limit_is_a_502_read_no_further(
    gateway: GatewayProcess, hostile: HostileUpstream, mode: str
) -> None:
    """Finding: a 2 GB body → 502 but the worker keeps 4.3 GB; an endless chunked body → 6 GB in 5 s."""
    gw = gateway.ensure()
    baseline = gw.rss_mb()
    resp, peak = gw.watch(lambda: chat(gw, mode))
    assert resp.status_code == 502, resp.text
    error = error_of(resp)
    assert "larger than the gateway's limit (33554432 bytes)" in error["message"]
    assert error["code"] == "upstream_too_large"
    # the gateway stopped reading at the limit (plus what was in flight), not at the end of the body
    assert hostile.sent[mode] < 100 * MB, hostile.sent[mode]
    after = settled_rss(gw, baseline + 40)
    read = hostile.sent[mode] / MB
    print(f"{mode}: baseline {baseline:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB, read {read:.0f} MB")
    assert peak < RSS_LIMIT_MB
    assert after < baseline + 40, "the request's memory is given back when it ends"


def test_a_huge_error_body_is_summarized_not_read(gateway: GatewayProcess, hostile: HostileUpstream) -> None:
    """Finding: a 1 GB error body → 2.4 GB."""
    gw = gateway.ensure()
    resp, peak = gw.watch(lambda: chat(gw, "huge_error"))
    assert resp.status_code == 502, resp.text
    message = error_of(resp)["message"]
    assert "HTTP 500" in message and len(message) < 1000, message[:300]
    assert hostile.sent["huge_error"] < 20 * MB, hostile.sent["huge_error"]
    (status, _, events), peak_streamed = gw.watch(lambda: stream(gw, "huge_error"))
    assert status == 502 and "HTTP 500" in orjson.loads(events[-1])["error"]["message"]
    assert hostile.sent["huge_error"] < 40 * MB, hostile.sent["huge_error"]
    peak = max(peak, peak_streamed)
    print(f"huge_error: peak {peak:.0f} MB, read {hostile.sent['huge_error'] / MB:.1f} MB for two")


def test_a_gzip_bomb_is_cut_at_the_decoded_limit(gateway: GatewayProcess, hostile: HostileUpstream) -> None:
    """Finding: a 1 MB gzip bomb → a 1 GB body forwarded to the client."""
    gw = gateway.ensure()
    resp, peak = gw.watch(lambda: chat(gw, "gzip_bomb"))
    assert resp.status_code == 502, resp.text[:300]
    assert len(resp.content) < 4096
    assert "decoded answer larger than the gateway's limit" in error_of(resp)["message"]
    print(f"gzip_bomb: peak {peak:.0f} MB, {hostile.sent['gzip_bomb'] / 1024:.0f} KB on the wire")


def test_an_endless_stream_without_usage_ends_with_an_error_event(
    gateway: GatewayProcess, hostile: HostileUpstream
) -> None:
    """Finding: an endless stream without usage → every frame kept for counting (3.5 GB)."""
    gw = gateway.ensure()
    (status, total, events), peak = gw.watch(lambda: stream(gw, "endless_sse", timeout_s=60), timeout_s=60)
    assert status == 200
    last = orjson.loads(events[-1].removeprefix(b"data: "))
    assert "stream larger than the gateway's limit (268435456 bytes)" in last["error"]["message"], last
    assert 200 * MB < total < 300 * MB, total
    print(f"endless_sse: {total / MB:.0f} MB to the client, peak {peak:.0f} MB")
    assert peak < RSS_LIMIT_MB


def test_an_sse_line_without_end_is_a_502_at_the_event_limit(
    gateway: GatewayProcess, hostile: HostileUpstream
) -> None:
    """Finding: an SSE line with no newline → quadratic buffering (633 MB in 30 s)."""
    gw = gateway.ensure()
    (status, _, events), peak = gw.watch(lambda: stream(gw, "noline", timeout_s=15), timeout_s=15)
    assert status == 502, events
    body = orjson.loads(events[-1])
    assert "event larger than the gateway's limit (1048576 bytes)" in body["error"]["message"]
    assert hostile.sent["noline"] < 20 * MB, hostile.sent["noline"]
    print(f"noline: peak {peak:.0f} MB, read {hostile.sent['noline'] / MB:.1f} MB")


def stalled_stream(port: int, hostile: HostileUpstream) -> tuple[float, bool]:
    """A streamed request whose client reads the head and nothing more; the hostile upstream paces an
    endless stream. (Seconds until the gateway let the upstream go, whether the client was closed.)"""
    body = orjson.dumps({"model": "paced", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s" % (KEY_ACME.encode(), len(body), body)
    )
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        started = time.monotonic()
        client.sendall(request)
        client.settimeout(5)
        assert client.recv(64).startswith(b"HTTP/1.1 200")
        # ... and reads nothing more. The upstream must be let go at the deadline (plus a margin).
        while hostile.open_answers["paced"] and time.monotonic() - started < ROUTE_TIMEOUT_S + 4:
            time.sleep(0.05)
        released = time.monotonic() - started
        assert hostile.open_answers["paced"] == 0, "the upstream is still streaming to the gateway"
        # then the client's connection is closed (a reset, or the end once the buffers drain)
        closed = False
        try:
            while time.monotonic() - started < ROUTE_TIMEOUT_S + 8:
                if not client.recv(1 << 20):
                    closed = True
                    break
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
        return released, closed


def test_a_client_that_stops_reading_is_cut_at_the_route_deadline(
    gateway: GatewayProcess, hostile: HostileUpstream
) -> None:
    """Finding: a client that stops reading holds a stream (and its upstream) past the route's deadline."""
    gw = gateway.ensure()
    released, closed = stalled_stream(gw.port, hostile)
    print(f"paced: upstream released {released:.2f}s after the request (deadline {ROUTE_TIMEOUT_S}s)")
    assert closed, "the client's connection is closed"
    assert released >= ROUTE_TIMEOUT_S - 0.1
    assert chat(gw, "normal").status_code == 200  # the gateway serves on


def test_the_asgi_path_lets_a_stalled_stream_go_too(
    gateway_factory: Callable[..., Any], hostile: HostileUpstream
) -> None:
    """The same on the ASGI path (``SSEResponse`` under plain uvicorn): the upstream is let go within
    the stall grace past the deadline. (Uvicorn, not the gateway, closes the client connection there.)"""
    gw = gateway_factory(routes=routes_yaml(hostile), budgets=BUDGETS, http="httptools")
    released, _ = stalled_stream(gw.server.port, hostile)
    print(f"paced (ASGI): upstream released {released:.2f}s after the request")
    assert released >= ROUTE_TIMEOUT_S - 0.1
