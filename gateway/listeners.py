"""The admin listener: ``/admin/*`` and ``/metrics`` on a port of their own (``GATEWAY_ADMIN_PORT``).

One uvicorn server (and, with ``--workers``, every worker) listens on both sockets; which one a
connection came in on is its local port, ASGI's ``scope["server"]``. ``AdminSplit`` answers 404 for an
admin path on the public port and for anything but admin, metrics and health paths on the admin port.
The proxy endpoints pay nothing for it: the check runs only on Starlette's path (never a proxied POST on
the public port), and ``GatewayHttpProtocol`` looks at the socket once per connection.
"""

from __future__ import annotations

import hmac
import socket

ADMIN_PREFIXES = ("/admin/", "/metrics")
BOTH = ("/healthz", "/readyz")
"""Probes answer on either port: a kubelet may watch the one that is exposed to it."""


def is_admin_path(path: str) -> bool:
    return path == "/metrics" or path.startswith("/admin/") or path == "/admin"


class AdminSplit:
    """Where a path may be served, given the port a connection arrived on."""

    def __init__(self, admin_port: int) -> None:
        self.admin_port = admin_port

    def allowed(self, path: str, server: tuple[str, int] | None) -> bool:
        on_admin = server is not None and server[1] == self.admin_port
        if path in BOTH:
            return True
        return is_admin_path(path) == on_admin


def bearer_ok(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(authorization[7:].strip().encode(), token.encode())


def bind(host: str, port: int) -> socket.socket:
    """A listening socket as uvicorn binds its own, inheritable by its worker processes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
