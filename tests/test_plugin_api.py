"""``/v1/plugins/{name}/{path}`` against a real sidecar process (tests/plugin_sidecar.py) on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Gateway, GatewayFactory, free_port
from replicas import Replica
from sidecars import (
    ADMIN,
    BUDGETS,
    DELEGATION_SECRET,
    KEYS,
    SIDECAR_TOKEN,
    Sidecar,
    bearer,
    routes_with_plugins,
)

from gateway import delegation

USER = bearer(KEYS["acme-user"])


@pytest.fixture
def gw(gateway_factory: GatewayFactory) -> Iterator[Gateway]:
    port = free_port()
    gateway = gateway_factory(
        routes=routes_with_plugins(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"),
        budgets=BUDGETS,
        admin_key=ADMIN,
        delegation_secret=DELEGATION_SECRET,
    )
    sidecar = Sidecar(gateway.url, port)
    yield gateway
    sidecar.stop()


def test_the_call_carries_who_is_calling_and_never_the_callers_key(gw: Gateway) -> None:
    spoofed = {
        **USER,
        "x-api-key": KEYS["acme-admin"],
        "x-gateway-tenant": "globex",
        "x-gateway-role": "admin",
        "x-request-id": "chosen-by-client",
        "x-custom": "kept",
        "x-hop": "dropped",
        "connection": "keep-alive, x-hop",
    }
    r = httpx.put(gw.url + "/v1/plugins/rag/echo/a/b%20c%2Fd?x=1&y=two", content=b"12345", headers=spoofed)
    assert r.status_code == 200, r.text
    seen = r.json()
    headers: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        headers.setdefault(name, []).append(value)
    assert (seen["method"], seen["path"], seen["query"], seen["body_bytes"]) == (
        "PUT",
        "/api/echo/a/b%20c%2Fd",
        "x=1&y=two",
        5,
    )
    assert headers["x-gateway-tenant"] == ["acme"]
    assert headers["x-gateway-key-id"] == ["acme-user"]
    assert headers["x-gateway-role"] == ["user"]
    assert headers["authorization"] == [f"Bearer {SIDECAR_TOKEN}"]
    assert headers["x-custom"] == ["kept"]
    assert "x-api-key" not in headers and "x-hop" not in headers
    request_id = headers["x-request-id"][0]
    assert request_id != "chosen-by-client" and r.headers["x-request-id"] == request_id
    everything = repr(seen)
    assert KEYS["acme-user"] not in everything and KEYS["acme-admin"] not in everything
    # the token is the caller's, child of this call, expiring within the default timeout (60 s)
    d = delegation.verify(DELEGATION_SECRET.encode(), headers["x-gateway-delegation"][0], time.time())
    assert (d.tenant, d.key_id, d.parent_request_id) == ("acme", "acme-user", request_id)
    assert time.time() < d.expires_at <= time.time() + 61


def test_the_sidecars_status_headers_and_body_come_back_as_they_are(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/v1/plugins/rag/status/418", headers=USER)
    assert r.status_code == 418
    assert r.text == "status 418 from the sidecar"
    assert r.headers["x-sidecar"] == "yes" and r.headers["content-type"].startswith("text/plain")
    # the sidecar's own refusal (here: no path of that name) is passed on too
    assert httpx.get(gw.url + "/v1/plugins/rag/nothing-here", headers=USER).status_code == 404


def test_sse_streams_through_unbuffered(gw: Gateway) -> None:
    """The sidecar sends one event, then waits to be released: the client can release it only if that
    first event reached it while the sidecar's answer was still open."""
    with httpx.stream("GET", gw.url + "/v1/plugins/rag/gated", headers=USER, timeout=20) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines) == "data: first"
        assert httpx.post(gw.url + "/v1/plugins/rag/release", headers=USER).status_code == 200
        rest = [line for line in lines if line]
    assert rest == ["data: released"]
    events = httpx.get(gw.url + "/v1/plugins/rag/sse", headers=USER).text
    assert events == "".join(f"data: event {i}\n\n" for i in range(3))


def test_unknown_plugins_and_plugins_without_an_api_are_404(gw: Gateway) -> None:
    for name in ("nope", "guard"):
        r = httpx.get(f"{gw.url}/v1/plugins/{name}/echo/x", headers=USER)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "plugin_not_found" and r.json()["error"]["param"] == "name"
    # unauthenticated callers learn nothing about which plugins exist
    assert httpx.get(gw.url + "/v1/plugins/nope/x").status_code == 401
    assert httpx.get(gw.url + "/v1/plugins/rag/x").status_code == 401


def test_a_sidecar_that_is_down_is_503_plugin_unavailable(gw: Gateway) -> None:
    r = httpx.post(gw.url + "/v1/plugins/down/anything", json={"a": 1}, headers=USER)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "plugin_unavailable" and r.json()["error"]["param"] == "down"


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_large_upload_streams_through_without_being_held(tmp_path: Path) -> None:
    """50 MB through a gateway process: its peak RSS grows by far less than the upload."""
    size, chunk = 50 * 1024 * 1024, b"x" * (256 * 1024)
    sidecar_port = free_port()
    routes, budgets = tmp_path / "routes.yaml", tmp_path / "budgets.yaml"
    routes.write_text(routes_with_plugins(f"http://127.0.0.1:{sidecar_port}", "http://127.0.0.1:9"))
    budgets.write_text(BUDGETS)
    log = tmp_path / "gateway.log"
    replica = Replica(routes, budgets, "", log, env={"GATEWAY_DELEGATION_SECRET": DELEGATION_SECRET})
    sidecar = None
    try:
        replica.wait_ready()
        sidecar = Sidecar(replica.url, sidecar_port)
        # warm up the path (imports, first connection) before measuring
        assert (
            httpx.post(replica.url + "/v1/plugins/rag/upload", content=chunk, headers=USER).status_code == 200
        )
        before = _rss_kb(replica.proc.pid, "VmHWM")

        def body() -> Iterator[bytes]:
            for _ in range(size // len(chunk)):
                yield chunk

        r = httpx.post(replica.url + "/v1/plugins/rag/upload", content=body(), headers=USER, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["bytes"] == size
        grown_mb = (_rss_kb(replica.proc.pid, "VmHWM") - before) / 1024
        chunks = r.json()["chunks"]
        print(f"\n50 MB upload: gateway peak RSS grew by {grown_mb:.1f} MB ({chunks} chunks at the sidecar)")
        assert grown_mb < 20
    finally:
        if sidecar is not None:
            sidecar.stop()
        replica.stop()
