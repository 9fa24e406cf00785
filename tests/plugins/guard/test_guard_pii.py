"""PII detectors: what they must find, and the look-alikes (digit runs, dates, ids, code) they must not."""

from __future__ import annotations

import random

import pytest

from plugins.guard import pii


def found(text: str) -> list[tuple[str, str]]:
    return [(f.type, f.value) for f in pii.find(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.roe+tag@mail.example.co.uk now", ("EMAIL", "jane.roe+tag@mail.example.co.uk")),
        ("card: 4111111111111111", ("CARD", "4111111111111111")),
        ("4111 1111 1111 1111", ("CARD", "4111 1111 1111 1111")),
        ("5500-0000-0000-0004", ("CARD", "5500-0000-0000-0004")),
        ("amex 3782 822463 10005", ("CARD", "3782 822463 10005")),
        ("pay with 6011000990139424 please", ("CARD", "6011000990139424")),
        ("IBAN GB82 WEST 1234 5698 7654 32.", ("IBAN", "GB82 WEST 1234 5698 7654 32")),
        ("to DE89370400440532013000", ("IBAN", "DE89370400440532013000")),
        ("FR1420041010050500013M02606", ("IBAN", "FR1420041010050500013M02606")),
        ("call +44 20 7946 0958", ("PHONE", "+44 20 7946 0958")),
        ("call +14155550132", ("PHONE", "+14155550132")),
        ("call (415) 555-0132", ("PHONE", "(415) 555-0132")),
        ("call 415-555-0132", ("PHONE", "415-555-0132")),
        ("appelez le 06 12 34 56 78", ("PHONE", "06 12 34 56 78")),
        ("ring 020 7946 0958", ("PHONE", "020 7946 0958")),
        ("ssn 123-45-6789", ("NATIONAL_ID", "123-45-6789")),
        ("DNI 12345678Z", ("NATIONAL_ID", "12345678Z")),
        ("NIE X1234567L", ("NATIONAL_ID", "X1234567L")),
        ("from 192.168.1.20:", ("IP", "192.168.1.20")),
        ("host 2001:db8::8a2e:370:7334 up", ("IP", "2001:db8::8a2e:370:7334")),
        ("OPENAI_API_KEY=sk-proj-AbCdEfGhIjKlMnOpQrStUv12", ("SECRET", "sk-proj-AbCdEfGhIjKlMnOpQrStUv12")),
        ("aws AKIAIOSFODNN7EXAMPLE", ("SECRET", "AKIAIOSFODNN7EXAMPLE")),
        ("gh ghp_" + "A1b2" * 9, ("SECRET", "ghp_" + "A1b2" * 9)),
        ("slack xoxb-123456789012-abcdefABCDEF", ("SECRET", "xoxb-123456789012-abcdefABCDEF")),
        ('{"api_key": "Zx8vQ2LmP9sT4kWqR7"}', ("SECRET", "Zx8vQ2LmP9sT4kWqR7")),
        ("token=f3A9kQ2mZ8xL1pW7vR4t", ("SECRET", "f3A9kQ2mZ8xL1pW7vR4t")),
    ],
)
def test_finds(text: str, expected: tuple[str, str]) -> None:
    assert found(text) == [expected]


def test_a_private_key_block_is_one_secret() -> None:
    block = (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow+IBAAKCAQEA0user@example.com\n"
        "4111111111111111\n-----END RSA PRIVATE KEY-----"
    )
    assert found(f"key:\n{block}\nthanks") == [("SECRET", block)]


@pytest.mark.parametrize(
    "text",
    [
        "order 20231115000123 shipped",  # an order number
        "ref 4111111111111111",  # Luhn-valid, but a bare run with no payment word near it
        "4111 1111 1111 1112",  # grouped, fails Luhn
        "1234 5678 9012 3456",  # grouped, fails Luhn
        "GB82 WEST 1234 5698 7654 33",  # IBAN layout, fails mod 97
        "DE89370400440532013001",
        "on 2024-01-15 at 10:30:00, or 15/01/2024, or 12.03.2024",  # dates and times
        "timestamp 1700000000123, epoch 1700000000",
        "id 550e8400-e29b-41d4-a716-446655440000",  # UUID
        "sha 9b5ad71b2ce5302211f9c61530b329a4922fc6a4",  # a hash
        "std::vector<int> v; a::b::c(); x = 10:30",  # C++ and a time, not IPv6
        "v10.0.0.1, OID 1.3.6.1.4.1.311 and 999.1.1.1",  # a version, an OID, an impossible address
        "ssn 000-12-3456, 666-12-3456, 900-12-3456, 123-00-4567",  # SSN ranges never issued
        "DNI 12345678A",  # wrong control letter
        "def f(x): return x @ w  # user@host",  # matrix product, no TLD
        "total 12345678 units, 3.14159265358979, 1e10",
        "token = get_token(request)  # a variable name, not a secret",
        "password: ${DB_PASSWORD}",  # a template reference
        "phone: 555 0132",  # too short to be a number anywhere
    ],
)
def test_does_not_find(text: str) -> None:
    assert found(text) == []


def test_random_digit_runs_are_not_cards_ibans_or_phones() -> None:
    rng = random.Random(14)
    flagged = []
    for _ in range(5000):
        n = rng.randint(6, 24)
        run = str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(n - 1))
        text = f"order {run} shipped on 2024-03-0{rng.randint(1, 9)}, invoice {run}."
        if pii.find(text):
            flagged.append(text)
    assert flagged == []


def test_luhn_valid_runs_are_cards_only_where_a_card_would_be() -> None:
    # Of random 16-digit runs, a few in a hundred pass Luhn and an issuer prefix; written grouped or
    # next to a payment word they are taken for cards, written bare they are not.
    rng = random.Random(15)
    cardlike = [
        run
        for run in ("".join(rng.choice("0123456789") for _ in range(16)) for _ in range(3000))
        if pii.is_card(run)
    ]
    assert 10 < len(cardlike) < 150
    for run in cardlike:
        grouped = " ".join(run[i : i + 4] for i in range(0, 16, 4))
        assert found(f"order {run}") == []
        assert found(f"my card is {run}") == [("CARD", run)]
        assert found(f"use {grouped}") == [("CARD", grouped)]


def test_checksums() -> None:
    assert pii.luhn_ok("79927398713") and not pii.luhn_ok("79927398710")
    assert pii.iban_ok("GB82WEST12345698765432") and not pii.iban_ok("GB82WEST12345698765433")
    assert not pii.iban_ok("GB82WEST1234569876543")  # a digit short for GB
    assert pii.is_card("378282246310005") and not pii.is_card("3782822463100050")  # Amex is 15 long


def test_overlaps_keep_the_longer_and_types_subset() -> None:
    text = "mail jane@example.com from 10.0.0.1 with sk-live-AbCdEfGhIjKlMnOpQrStUvWx"
    assert [t for t, _ in found(text)] == ["EMAIL", "IP", "SECRET"]
    assert [t for t, _ in [(f.type, f.value) for f in pii.find(text, ["IP"])]] == ["IP"]
