"""Upstream connectivity (issue 17): proxies from the environment, SSL_CERT_FILE, per-provider ``tls:``.

Real loopback servers (tests/egress_servers.py): an HTTPS/mTLS upstream signed by a ``trustme`` test CA,
a CONNECT / absolute-form forward proxy; the gateway live on uvicorn, driven by the openai SDK.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import trustme
import yaml

from gateway.config.parse import ConfigError, parse_routes
from gateway.egress import bypassed, proxy_for
from tests.conftest import GatewayFactory
from tests.egress_servers import Loop, Proxy, Upstream

PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")


def routes(base_url: str, tls: str = "") -> str:
    return f"""
providers:
  up:
    type: openai
    base_url: {base_url}
    api_key: sk-up
{tls}
models:
  m: {{provider: up, upstream: gpt-4o-mini}}
routes:
  - name: r
    match: {{model: m}}
    targets: [{{model: m}}]
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.fixture
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.stop()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *, client_certs: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    if client_certs:  # mTLS: only clients with a certificate from the test CA get in
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def ask(base_url: str, *, stream: bool = False) -> str:
    # the test's own client must not take the proxy the gateway is told about
    http = openai.DefaultHttpxClient(trust_env=False)
    client = openai.OpenAI(
        base_url=base_url, api_key="sk-test-acme", max_retries=0, timeout=10, http_client=http
    )
    messages = [{"role": "user", "content": "hi"}]
    if stream:
        parts = client.chat.completions.create(model="m", messages=messages, stream=True)  # type: ignore[call-overload]
        return "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    answer = client.chat.completions.create(model="m", messages=messages)  # type: ignore[call-overload]
    return str(answer.choices[0].message.content)


# -- proxy rules (Python's conventions) ---------------------------------------------------------------


def test_no_proxy_rules_follow_pythons_conventions() -> None:
    proxies = {"https": "http://proxy:3128", "http": "proxy:8080", "no": "internal.corp, 10.0.0.0/8,.svc,::1"}
    assert proxy_for("https://api.openai.com/v1", proxies) == "http://proxy:3128"
    assert proxy_for("http://models.example/v1", proxies) == "http://proxy:8080"  # bare host:port → http
    assert proxy_for("https://internal.corp/v1", proxies) is None
    assert proxy_for("https://llm.internal.corp/v1", proxies) is None  # a suffix covers subdomains
    assert proxy_for("https://notinternal.corp/v1", proxies) == "http://proxy:3128"  # but not a mere tail
    assert proxy_for("http://10.2.3.4:8000/v1", proxies) is None  # CIDR
    assert proxy_for("http://vllm.ns.svc:8000/v1", proxies) is None
    assert proxy_for("http://[::1]:8000/v1", proxies) is None
    # loopback is not exempt unless listed
    assert proxy_for("http://127.0.0.1:8000/v1", proxies) == "http://proxy:8080"
    assert proxy_for("http://localhost:8000/v1", proxies) == "http://proxy:8080"
    assert proxy_for("https://x.example/v1", {"all": "http://p:1"}) == "http://p:1"
    assert proxy_for("https://x.example/v1", {"https": "http://p:1", "no": "*"}) is None
    assert bypassed("a.example", 8443, "a.example:8443") and not bypassed("a.example", 443, "a.example:8443")
    assert bypassed("b.example", 443, "*.b.example, b.example")


# -- proxies, live --------------------------------------------------------------------------------------


def test_https_upstream_goes_through_the_connect_proxy(
    gateway_factory: GatewayFactory,
    loop: Loop,
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream, proxy = Upstream(loop, server_context(ca)), Proxy(loop)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    gw = gateway_factory(routes(upstream.url))
    assert ask(gw.base_url) == "Hello there!"
    assert ask(gw.base_url, stream=True) == "Hi there"
    assert proxy.seen and set(proxy.seen) == {f"CONNECT 127.0.0.1:{upstream.port}"}
    assert len(upstream.requests) == 2


def test_http_upstream_goes_through_the_proxy_in_absolute_form(
    gateway_factory: GatewayFactory, loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream, proxy = Upstream(loop), Proxy(loop)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "internal.example")  # another host: loopback still goes through
    gw = gateway_factory(routes(upstream.url))
    assert ask(gw.base_url) == "Hello there!"
    assert ask(gw.base_url, stream=True) == "Hi there"
    assert proxy.seen == [f"POST http://127.0.0.1:{upstream.port}/v1/chat/completions"] * 2
    assert [line for line, _ in upstream.requests] == ["POST /v1/chat/completions HTTP/1.1"] * 2


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "*"])
def test_no_proxy_sends_the_upstream_direct(
    gateway_factory: GatewayFactory, loop: Loop, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    upstream, proxy = Upstream(loop), Proxy(loop)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("no_proxy", no_proxy)
    gw = gateway_factory(routes(upstream.url))
    assert ask(gw.base_url) == "Hello there!"
    assert proxy.seen == [] and len(upstream.requests) == 1


# -- TLS ------------------------------------------------------------------------------------------------


def test_ssl_cert_file_is_honoured_on_the_direct_path(
    gateway_factory: GatewayFactory,
    loop: Loop,
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream = Upstream(loop, server_context(ca))
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    gw = gateway_factory(routes(upstream.url))
    assert ask(gw.base_url) == "Hello there!"


def test_tls_ca_file_verify_and_the_clear_error_without_it(
    gateway_factory: GatewayFactory, loop: Loop, ca: trustme.CA, tmp_path: Path
) -> None:
    upstream = Upstream(loop, server_context(ca))
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    gw = gateway_factory(routes(upstream.url, f"    tls: {{ca_file: {bundle}}}"))
    assert ask(gw.base_url) == "Hello there!"
    assert ask(gw.base_url, stream=True) == "Hi there"

    # the same upstream without the CA: the system roots do not trust it, and the 502 says why
    plain = gateway_factory(routes(upstream.url))
    with pytest.raises(openai.InternalServerError) as caught:
        ask(plain.base_url)
    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "upstream_tls_error"
    assert "CERTIFICATE_VERIFY_FAILED" in error["message"], error

    insecure = gateway_factory(routes(upstream.url, "    tls: {verify: false}"))
    assert ask(insecure.base_url) == "Hello there!"


def test_mtls_upstream_needs_the_client_certificate(
    gateway_factory: GatewayFactory, loop: Loop, ca: trustme.CA, tmp_path: Path
) -> None:
    upstream = Upstream(loop, server_context(ca, client_certs=True))
    bundle, cert, key = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    ca.cert_pem.write_to_path(str(bundle))
    client = ca.issue_cert("gateway.client.example")
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))
    gw = gateway_factory(
        routes(upstream.url, f"    tls: {{ca_file: {bundle}, cert_file: {cert}, key_file: {key}}}")
    )
    assert ask(gw.base_url) == "Hello there!"
    peer = upstream.peer_certs[-1]
    assert peer is not None and ("DNS", "gateway.client.example") in peer["subjectAltName"]

    without = gateway_factory(routes(upstream.url, f"    tls: {{ca_file: {bundle}}}"))
    with pytest.raises(openai.InternalServerError) as caught:
        ask(without.base_url)
    error = caught.value.body
    assert caught.value.status_code == 502 and isinstance(error, dict), error
    assert len(upstream.requests) == 1  # nothing got past the TLS layer without the certificate
    # The server checks the client certificate after the client's side of a TLS 1.3 handshake is done and
    # hangs up: the gateway sees a disconnect, not a TLS reason (a real server answers 400 or an alert).
    assert error["code"] == "upstream_error" and "upstream 'up' failed" in error["message"], error


# -- config checks --------------------------------------------------------------------------------------


def test_tls_settings_are_checked_with_paths(tmp_path: Path, ca: trustme.CA) -> None:
    cert, bad = tmp_path / "c.pem", tmp_path / "bad.pem"
    ca.cert_pem.write_to_path(str(cert))
    bad.write_text("not a certificate")
    cases = {
        f"    tls: {{key_file: {cert}}}": "providers.up.tls.key_file: needs cert_file",
        "    tls: {ca_file: /nonexistent/ca.pem}": "tls.ca_file: cannot read '/nonexistent/ca.pem'",
        "    tls: {verify: maybe}": "providers.up.tls.verify: must be true or false",
        f"    tls: {{ca_file: {cert}, verify: false}}": "tls.ca_file: has no effect with verify: false",
        f"    tls: {{ca_file: {bad}}}": "providers.up.tls: cannot load the certificates",
        "    tls: {cafile: x}": "providers.up.tls: unknown field 'cafile'",
    }
    for tls, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            parse_routes(yaml.safe_load(routes("https://up.example/v1", tls)))
        assert message in str(caught.value), (tls, str(caught.value))
