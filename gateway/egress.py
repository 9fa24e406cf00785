"""How the gateway reaches each provider: directly on ``FastTransport``, or through httpx's own transport
when the provider needs what the fast one lacks (an HTTP(S) proxy, custom TLS).

The choice is made once per provider when a config version is compiled, never per request: a provider
whose URL goes direct with default TLS keeps the fast transport (it costs about half the CPU of
httpcore per call, bench/RESULTS.md); one behind a proxy or with ``tls:`` settings gets an
``httpx.AsyncHTTPTransport`` (CONNECT tunnels, absolute-form requests to HTTP proxies, client
certificates), plugged into the same seam ``gateway/providers/http.py`` already serves (the upstream
limits and decoding hold on both paths). Such transports are shared by every provider with the same
proxy and TLS settings and outlive config versions, so a reload does not reopen connections.

Proxies follow Python's conventions (``urllib.request.getproxies``, httpx's ``trust_env``): the
``<scheme>_proxy`` / ``ALL_PROXY`` environment variables (lower case wins), ``NO_PROXY`` a comma-separated
list of host suffixes, IP addresses or CIDR ranges, ``*`` for all; loopback is *not* exempt unless listed.
``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` are OpenSSL's own and honoured by both paths (the default context).
"""

from __future__ import annotations

import ipaddress
import ssl
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

if TYPE_CHECKING:  # the config parser imports tls_context from here
    from gateway.config.model import ProviderConfig, TlsConfig


def proxy_for(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy URL ``url`` goes through given ``getproxies()``-style settings, or None (direct)."""
    if not url or not proxies:
        return None
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or not host or bypassed(host, parts.port, proxies.get("no", "")):
        return None
    return proxy if "://" in proxy else "http://" + proxy  # "proxy:3128" means plain HTTP, as in curl


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """``NO_PROXY`` semantics: ``*``; a host or any subdomain of it (``example.com``, ``.example.com``,
    ``*.example.com``), optionally with ``:port``; an IP address or a CIDR range."""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, only_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
        if only_port and port is not None and only_port != str(port):
            continue
        name = name.lstrip("*").lstrip(".").strip("[]")
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass  # a host name in the list: it cannot match an address
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def _has_port(entry: str) -> bool:
    head, sep, tail = entry.rpartition(":")
    return bool(sep) and tail.isdigit() and (head.count(":") == 0 or head.endswith("]"))


def tls_context(tls: TlsConfig | None) -> ssl.SSLContext:
    """The context for a provider's ``tls:``: ``ca_file`` replaces the default roots (as curl's
    ``--cacert``); ``cert_file``/``key_file`` is the client certificate; ``verify: false`` skips checks."""
    if tls is None:
        return ssl.create_default_context()
    context = ssl.create_default_context(cafile=tls.ca_file or None)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file or None)
    return context


class Egress:
    """Hands each provider its transport: ``direct`` unless a proxy or ``tls:`` applies."""

    def __init__(self, direct: httpx.AsyncBaseTransport, proxies: Mapping[str, str] | None = None) -> None:
        self.direct = direct
        # Read once, at start-up, like httpx's client with trust_env.
        self.proxies = dict(urllib.request.getproxies() if proxies is None else proxies)
        self._routed: dict[tuple[str | None, TlsConfig | None], httpx.AsyncHTTPTransport] = {}

    def transport_for(self, config: ProviderConfig) -> httpx.AsyncBaseTransport:
        proxy = proxy_for(config.base_url, self.proxies)
        if proxy is None and config.tls is None:
            return self.direct
        key = (proxy, config.tls)
        routed = self._routed.get(key)
        if routed is None:
            routed = self._routed[key] = httpx.AsyncHTTPTransport(
                verify=tls_context(config.tls),
                proxy=httpx.Proxy(proxy) if proxy else None,
                limits=httpx.Limits(max_connections=2000, max_keepalive_connections=256, keepalive_expiry=30),
                trust_env=False,  # decided here, once, not again by httpx
            )
        return routed

    async def aclose(self) -> None:
        for routed in self._routed.values():
            await routed.aclose()
        self._routed.clear()
