"""Prompt-injection screen: a transparent, dependency-free scorer.

`screen(text)` normalises the text, runs weighted rules over it and compares the score with a threshold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THRESHOLD = 1.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The screen's decision: `flagged` when `score >= THRESHOLD`; `rules` names the rules that fired."""

    flagged: bool
    score: float
    rules: tuple[str, ...]


_OVERRIDE = re.compile(
    r"\b(ignore|disregard|forget)\s+(all\s+)?(the\s+)?(previous|prior|above|earlier)\s+instructions\b"
)


def screen(text: str) -> Verdict:
    """Score `text` for prompt-injection signals."""
    rules: list[str] = []
    score = 0.0
    if _OVERRIDE.search(text.lower()):
        rules.append("override")
        score += 1.0
    return Verdict(flagged=score >= THRESHOLD, score=score, rules=tuple(rules))
