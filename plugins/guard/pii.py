"""PII detectors: a regular expression finds candidates, a checksum or a range check confirms them.

Where a format carries a checksum it is required (cards: Luhn plus an issuer prefix and length; IBANs:
country length plus mod 97; Spanish DNI/NIE: the control letter), so a run of digits in an order number,
a timestamp or a log line is not taken for a card. Phones need a ``+`` country code or a national layout
with separators: a bare run of digits is never a phone. Secrets are matched by the prefixes their issuers
put on them, private key blocks, and high-entropy values after ``key=``/``token=``-like names.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

TYPES = ("EMAIL", "PHONE", "CARD", "IBAN", "NATIONAL_ID", "IP", "SECRET")


@dataclass(frozen=True, slots=True)
class Finding:
    type: str
    start: int
    end: int
    value: str


# Not inside a longer word, number or path: "id-4111…", "v1.2.3.4", "…/4111…" are not candidates.
# Patterns start with the character they need and look behind it afterwards (``\d(?<![\w]\d)`` rather
# than ``(?<!\w)\d``): the regex engine then skips ahead to that character instead of trying every
# position, which makes a scan about twice as fast. Detectors whose patterns need a rare character or
# prefix (``@``, ``+``, ``sk-``) run only when the text has it.
_R = r"(?![\w@/-]|\.\w)"

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][\w.+-]{0,63}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b"
)

_CARD = re.compile(r"\d(?<![\w@/.+-]\d)(?:[ -]?\d){12,18}" + _R)
# Issuer prefixes and the lengths each issues (ISO/IEC 7812 registry, the common networks).
_CARD_ISSUERS: tuple[tuple[re.Pattern[str], tuple[int, ...]], ...] = (
    (re.compile(r"4"), (13, 16, 19)),  # Visa
    (re.compile(r"5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)"), (16,)),  # Mastercard
    (re.compile(r"3[47]"), (15,)),  # American Express
    (re.compile(r"6(?:011|5|4[4-9])"), (16, 19)),  # Discover
    (re.compile(r"35(?:2[89]|[3-8]\d)"), (16, 19)),  # JCB
    (re.compile(r"3(?:0[0-5]|[689])"), (14, 16, 19)),  # Diners Club
    (re.compile(r"62"), (16, 19)),  # UnionPay
)

_CARD_GROUPED = re.compile(r"\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{4,5}")
_CARD_CONTEXT = re.compile(
    r"(?i)\b(?:card|credit|debit|visa|master\s?card|amex|american express|discover|jcb|diners|unionpay"
    r"|cc|pan|cvv|cvc|exp(?:iry|iration)?|payment|pay|karte|tarjeta|carte|carta)\b"
)
_CONTEXT_CHARS = 40

_IBAN = re.compile(r"[A-Z](?<![\w-][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w-])")
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21, "CY": 28,
    "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GI": 23,
    "GL": 18, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "KW": 30, "KZ": 20,
    "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "ME": 22, "MK": 19, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24,
    "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29,
}  # fmt: skip

_PHONES = (
    # E.164 with optional separators: + country code, 8 to 15 digits in all.
    re.compile(r"\+(?<![\w+]\+)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,6}" + _R),
    # North American: (415) 555-0132, 415-555-0132, 415.555.0132 — separators required.
    re.compile(r"(?:\((?<![\w(.-]\()\d{3}\) ?|\d(?<![\w(.-]\d)\d\d[.-])\d{3}[.-]\d{4}" + _R),
    # Trunk-prefix national layouts in groups: 020 7946 0958, 06 12 34 56 78, 030/1234567.
    re.compile(r"0(?<![\w.-]0)\d{1,4}(?:[ /]\d{2,4}){1,4}" + _R),
)

_SSN = re.compile(r"\d(?<![\w-]\d)\d\d-\d\d-\d{4}(?![\w-])")
_DNI = re.compile(r"(?:[XYZ](?<![\w-][XYZ])\d{7}|\d(?<![\w-]\d)\d{7})-?[A-Z](?![\w-])")
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"

_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")

_SECRETS: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    # (what the text must contain for the pattern to be worth running, the pattern)
    (
        ("-----BEGIN",),
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    ),
    (
        ("sk-",),
        re.compile(r"(?<![\w-])sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}"),
    ),  # OpenAI, Anthropic, Stripe
    (("AKIA", "ASIA"), re.compile(r"(?<!\w)(?:AKIA|ASIA)[0-9A-Z]{16}(?!\w)")),  # AWS access key id
    (
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(r"(?<!\w)(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})"),  # GitHub
    ),
    (("xox",), re.compile(r"(?<!\w)xox[abposr]-[A-Za-z0-9-]{10,}")),  # Slack
    (("AIza",), re.compile(r"(?<!\w)AIza[0-9A-Za-z_-]{35}")),  # Google API key
    (("glpat-",), re.compile(r"(?<!\w)glpat-[A-Za-z0-9_-]{20,}")),  # GitLab
    (("eyJ",), re.compile(r"(?<![\w-])eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{16,}")),  # JWT
)
# A value after a secret-sounding name; only the value is replaced, and only when it looks random.
_ASSIGNED = re.compile(
    r"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|token|access[_-]?key|auth|password|passwd|pwd|client[_-]?secret)"
    r"\b[\"']?\s*[:=]\s*[\"']?([^\s\"',;]{12,})"
)
_ASSIGNED_HINTS = ("key", "secret", "token", "auth", "pass", "pwd")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-+/=.~]+")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_card(digits: str) -> bool:
    """Luhn, and a length the issuer whose prefix it carries really issues."""
    if not luhn_ok(digits):
        return False
    return any(p.match(digits) and len(digits) in lengths for p, lengths in _CARD_ISSUERS)


def iban_ok(compact: str) -> bool:
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def entropy_bits(text: str) -> float:
    """Shannon entropy per character: random tokens score high, words and repeated characters low."""
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def _looks_random(value: str) -> bool:
    """Letters and digits in a token alphabet, with high entropy: not a word, a call or a template."""
    return (
        _TOKEN_CHARS.fullmatch(value) is not None
        and re.search(r"\d", value) is not None
        and re.search(r"[A-Za-z]", value) is not None
        and entropy_bits(value) >= 3.0
    )


def _emails(text: str) -> Iterator[Finding]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        yield Finding("EMAIL", m.start(), m.end(), m.group())


def _cards(text: str) -> Iterator[Finding]:
    for m in _CARD.finditer(text):
        value = m.group()
        if not is_card(re.sub(r"\D", "", value)):
            continue
        # One in ~50 random 16-digit runs passes Luhn and an issuer prefix: a bare run (an order number,
        # an id) is a card only near a payment word; cards are written grouped, which needs no such word.
        grouped = _CARD_GROUPED.fullmatch(value) is not None
        near = text[max(0, m.start() - _CONTEXT_CHARS) : m.end() + _CONTEXT_CHARS]
        if grouped or _CARD_CONTEXT.search(near):
            yield Finding("CARD", m.start(), m.end(), value)


def _ibans(text: str) -> Iterator[Finding]:
    for m in _IBAN.finditer(text):
        if iban_ok(m.group().replace(" ", "")):
            yield Finding("IBAN", m.start(), m.end(), m.group())


def _phones(text: str) -> Iterator[Finding]:
    for i, pattern in enumerate(_PHONES):
        if i == 0 and "+" not in text:
            continue
        for m in pattern.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if 8 <= len(digits) <= 15:
                yield Finding("PHONE", m.start(), m.end(), m.group())


def _national_ids(text: str) -> Iterator[Finding]:
    for m in _SSN.finditer(text):
        area, group, serial = m.group().split("-")
        # Never issued: area 000, 666 or 900-999; group 00; serial 0000.
        if area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000":
            yield Finding("NATIONAL_ID", m.start(), m.end(), m.group())
    for m in _DNI.finditer(text):
        value = m.group().replace("-", "")
        number = int(str("XYZ".index(value[0])) + value[1:8] if value[0] in "XYZ" else value[:8])
        if _DNI_LETTERS[number % 23] == value[-1]:
            yield Finding("NATIONAL_ID", m.start(), m.end(), m.group())


def _ips(text: str) -> Iterator[Finding]:
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield Finding("IP", m.start(), m.end(), m.group())
    if "::" not in text and text.count(":") < 7:
        return
    for m in _IPV6.finditer(text):
        value = m.group()
        # Three groups at least: "a::b" in C++ or "10:30" in a time are not addresses.
        if sum(1 for g in value.split(":") if g) < 3:
            continue
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            continue
        yield Finding("IP", m.start(), m.end(), value)


def _secrets(text: str) -> Iterator[Finding]:
    for needs, pattern in _SECRETS:
        if any(literal in text for literal in needs):
            for m in pattern.finditer(text):
                yield Finding("SECRET", m.start(), m.end(), m.group())
    lower = text.lower()
    if not any(hint in lower for hint in _ASSIGNED_HINTS):
        return
    for m in _ASSIGNED.finditer(text):
        if _looks_random(m.group(1)):
            yield Finding("SECRET", m.start(1), m.end(1), m.group(1))


_DETECTORS: dict[str, Callable[[str], Iterator[Finding]]] = {
    "SECRET": _secrets,  # first: a key block or token may contain anything below
    "EMAIL": _emails,
    "IBAN": _ibans,
    "CARD": _cards,
    "NATIONAL_ID": _national_ids,
    "IP": _ips,
    "PHONE": _phones,
}


def find(text: str, types: Iterable[str] = TYPES) -> list[Finding]:
    """Non-overlapping findings of the given types, in text order.

    Where two overlap the longer wins, then the type listed first in ``_DETECTORS`` (a secret before the
    email or digits inside it).
    """
    wanted = set(types)
    found: list[tuple[int, int, int, Finding]] = []
    for rank, (name, detect) in enumerate(_DETECTORS.items()):
        if name in wanted:
            found.extend((f.start, -(f.end - f.start), rank, f) for f in detect(text))
    found.sort(key=lambda item: (item[1], item[2], item[0]))  # longest first, then by rank
    taken: list[Finding] = []
    for _, _, _, f in found:
        if all(f.end <= t.start or f.start >= t.end for t in taken):
            taken.append(f)
    return sorted(taken, key=lambda f: f.start)
