"""Delegation tokens: a sidecar calls the gateway's ``/v1/*`` endpoints as the request's original caller.

A token is ``gwd1.<payload>.<signature>``: the payload is base64url JSON ``{"t": tenant, "k": key id,
"p": parent request id, "exp": unix seconds}`` and the signature base64url HMAC-SHA256 over
``gwd1.<payload>`` with the deployment's delegation secret. Every replica must share that secret
(``GATEWAY_DELEGATION_SECRET``); a process that runs alone may make its own at start. The prefix lets
authentication tell a token from a key without hashing it.

What a token does not carry is as important: no role (a delegated call is always a ``user`` call, so a
token never reaches the admin API), and nothing that would let it mint another (a request made with a
token hands its hooks the same token, never a new one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import orjson

PREFIX = "gwd1."
SECRET_ENV = "GATEWAY_DELEGATION_SECRET"
MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Delegation:
    tenant: str
    key_id: str
    parent_request_id: str
    expires_at: int
    """Unix seconds; the token is refused from this second on."""


class InvalidToken(ValueError):
    """Forged, malformed or expired; the message says which, for the server's log only."""


def new_secret() -> bytes:
    """A secret for a gateway process that runs alone (one worker, no shared store)."""
    return secrets.token_bytes(MIN_SECRET_BYTES)


def parse_secrets(value: str | None) -> tuple[bytes, ...]:
    """``GATEWAY_DELEGATION_SECRET`` as secrets: a comma-separated list where the first signs and every
    one verifies, so a rotation adds the new secret first on every replica, then drops the old one once
    the longest token's lifetime has passed. Each must be at least ``MIN_SECRET_BYTES`` long."""
    out = tuple(part.strip().encode() for part in (value or "").split(",") if part.strip())
    short = [i for i, secret in enumerate(out) if len(secret) < MIN_SECRET_BYTES]
    if short:
        raise ValueError(
            f"{SECRET_ENV}: secret #{short[0] + 1} is shorter than {MIN_SECRET_BYTES} characters"
        )
    return out


def is_token(presented: str) -> bool:
    return presented.startswith(PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, signed: str) -> str:
    return _b64(hmac.new(secret, signed.encode(), hashlib.sha256).digest())


def mint(secret: bytes, d: Delegation) -> str:
    payload = _b64(
        orjson.dumps({"t": d.tenant, "k": d.key_id, "p": d.parent_request_id, "exp": d.expires_at})
    )
    signed = PREFIX + payload
    return f"{signed}.{_sign(secret, signed)}"


def verify(secret: bytes, token: str, now: float) -> Delegation:
    """The delegation a token carries, or ``InvalidToken``. The signature is compared in constant time
    before anything in the payload is trusted."""
    if not token.startswith(PREFIX):
        raise InvalidToken("not a delegation token")
    signed, dot, signature = token.rpartition(".")
    if not dot or not hmac.compare_digest(_sign(secret, signed), signature):
        raise InvalidToken("bad signature")
    try:
        fields = orjson.loads(_unb64(signed[len(PREFIX) :]))
        d = Delegation(str(fields["t"]), str(fields["k"]), str(fields["p"]), int(fields["exp"]))
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidToken("malformed payload") from exc
    if now >= d.expires_at:
        raise InvalidToken("expired")
    return d
