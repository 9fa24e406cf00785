"""Delegation tokens: minted, verified, and refused when forged, tampered with or expired."""

from __future__ import annotations

import pytest

from gateway.delegation import Delegation, InvalidToken, is_token, mint, new_secret, verify

SECRET = b"s" * 32
D = Delegation(tenant="acme", key_id="acme-backend", parent_request_id="req_1", expires_at=1_000)


def test_a_minted_token_verifies_to_what_it_carries() -> None:
    token = mint(SECRET, D)
    assert is_token(token)
    assert verify(SECRET, token, now=999.9) == D


def test_an_expired_token_is_refused_from_its_expiry_second() -> None:
    with pytest.raises(InvalidToken, match="expired"):
        verify(SECRET, mint(SECRET, D), now=1_000)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(InvalidToken, match="signature"):
        verify(SECRET, mint(new_secret(), D), now=0)


def test_a_tampered_payload_is_refused() -> None:
    token = mint(SECRET, D)
    other = mint(SECRET, Delegation("evil", "k", "p", 10**10))
    forged = other.rsplit(".", 1)[0] + "." + token.rsplit(".", 1)[1]
    with pytest.raises(InvalidToken, match="signature"):
        verify(SECRET, forged, now=0)


@pytest.mark.parametrize("text", ["sk-abc", "gwd1.", "gwd1.x", "gwd1.!!!.sig", ""])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(InvalidToken):
        verify(SECRET, text, now=0)


def test_a_signed_but_malformed_payload_is_refused() -> None:
    from gateway.delegation import PREFIX, _b64, _sign

    signed = PREFIX + _b64(b'{"t": "acme"}')
    with pytest.raises(InvalidToken, match="malformed"):
        verify(SECRET, f"{signed}.{_sign(SECRET, signed)}", now=0)
