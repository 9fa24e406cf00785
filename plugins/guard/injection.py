"""Prompt-injection screen: a transparent, dependency-free scorer.

`screen(text)` normalises the text (NFKC, zero-width characters removed, mixed-script homoglyphs and
leetspeak folded, s p a c e d letters joined), runs weighted rules over it and flags it when the score
reaches `THRESHOLD`. Every rule is a named regular expression with a weight, so a verdict can be explained
by its `rules` and an operator can read the whole policy in this file.

Benign texts that *talk about* instructions are the hard part. Three dampeners lower a match's weight:
a match inside a code span (fenced or backticked), a match inside quotes when the text reports or asks
about the quoted words ("the attacker wrote", "translate", "classify"), and a text that discusses security
(prompt injection, red team, phishing...). Rules that address an AI reader directly ("note to the AI",
"do not tell the user") are what indirect injections share and benign documents lack; they are never
dampened by the discussion vocabulary alone.

Measured on the shipped corpus by `python -m plugins.guard.bench` (figures and blind spots in README.md).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

from plugins.guard.injection_rules import CODE, CODE_SHAPE, DISCUSSION, FRAME, QUOTED, RULES

THRESHOLD = 1.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The screen's decision: `flagged` when `score >= THRESHOLD`; `rules` names the rules that fired."""

    flagged: bool
    score: float
    rules: tuple[str, ...]


_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"))
# Cyrillic and Greek letters that render like Latin ones; folded only inside mixed-script words.
_HOMOGLYPHS = str.maketrans(
    "аеорсхуіѕјԁһӏАВЕКМНОРСТХІЅЈαοτνκιΑΒΕΗΙΚΜΝΟΡΤΧΥΖ", "aeopcxyisjdhlABEKMHOPCTXISJaotvkiABEHIKMNOPTXYZ"
)
_CONFUSABLE = frozenset("аеорсхуіѕјԁһӏАВЕКМНОРСТХІЅЈαοτνκιΑΒΕΗΙΚΜΝΟΡΤΧΥΖ")
_WORD = re.compile(r"\w+")
_SPACED = re.compile(r"(?<!\w)(?:\w ){3,}\w(?!\w)")
_LEET_TOKEN = re.compile(r"\b(?=\w*[a-z])(?=\w*[0-9])\w+\b")
_LEET = str.maketrans("013457", "oieast")
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{24,}={0,2}")

_CODE_FACTOR = 0.3
_QUOTE_FACTOR = 0.3
_DISCUSSION_FACTOR = 0.5
_OBFUSCATION_WEIGHT = 0.3
_BASE64_MAX = 8192


def screen(text: str) -> Verdict:
    """Score `text` for prompt-injection signals; flag it when the score reaches `THRESHOLD`."""
    score, rules = _score(text, decode=True)
    return Verdict(flagged=score >= THRESHOLD, score=round(score, 3), rules=tuple(rules))


def _score(text: str, *, decode: bool) -> tuple[float, list[str]]:
    norm, leet, signals = _normalise(text)
    code = [m.span() for m in CODE.finditer(norm)]
    quoted = [m.span() for m in QUOTED.finditer(norm)] if FRAME.search(norm) else []
    code_shaped = len(CODE_SHAPE.findall(norm)) >= 2
    discussion = DISCUSSION.search(norm) is not None

    score = 0.0
    rules: list[str] = []
    folded_hit = False
    for rule in RULES:
        best = 0.0
        for m in rule.pattern.finditer(leet):
            start, end = m.span()
            weight = rule.weight
            if code_shaped or _inside(start, code):
                weight *= _CODE_FACTOR
            elif not rule.direct and _inside(start, quoted):
                weight *= _QUOTE_FACTOR
            if discussion and not rule.direct:
                weight *= _DISCUSSION_FACTOR
            if weight > best:
                best = weight
                folded_hit = folded_hit or leet[start:end] != norm[start:end]
        if best:
            score += best
            rules.append(rule.name)
    if folded_hit:
        signals.append("leetspeak")
    if rules:
        # Obfuscation only counts next to something it hides; alone it is just an odd text.
        score += _OBFUSCATION_WEIGHT * len(signals)
        rules.extend(signals)
    if decode:
        for blob in _BASE64.findall(text):
            # Long blobs are payloads (images, archives), not hidden sentences; decoding them costs time.
            decoded = _decode_base64(blob) if len(blob) <= _BASE64_MAX else None
            if decoded is None:
                continue
            inner, inner_rules = _score(decoded, decode=False)
            if inner_rules:
                score += inner + _OBFUSCATION_WEIGHT
                rules.append("base64")
                rules.extend(r for r in inner_rules if r not in rules)
    return score, rules


def _normalise(text: str) -> tuple[str, str, list[str]]:
    """The lowered text, its leet-folded twin (same length, so spans agree) and the obfuscations seen."""
    signals: list[str] = []
    norm = unicodedata.normalize("NFKC", text)
    stripped = norm.translate(_ZERO_WIDTH)
    if len(stripped) != len(norm):
        signals.append("zero_width")
        norm = stripped
    if not norm.isascii():
        mixed = False

        def fold(m: re.Match[str]) -> str:
            nonlocal mixed
            word = m.group()
            if any(c in _CONFUSABLE for c in word) and any("a" <= c.lower() <= "z" for c in word):
                mixed = True
                return word.translate(_HOMOGLYPHS)
            return word

        norm = _WORD.sub(fold, norm)
        if mixed:
            signals.append("homoglyph")
    joined = _SPACED.sub(lambda m: m.group().replace(" ", ""), norm)
    if joined != norm:
        signals.append("spaced_letters")
        norm = joined
    norm = norm.lower()
    leet = _LEET_TOKEN.sub(lambda m: m.group().translate(_LEET), norm)
    return norm, leet, signals


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= pos < end for start, end in spans)


def _decode_base64(blob: str) -> str | None:
    try:
        raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded if decoded.isprintable() else None
