"""Redaction for opt-in content logging: secrets and PII-looking substrings become ``[REDACTED]``.

Pattern-based, so it is a safety net, not a guarantee: a route should turn on ``log_content`` only
where logging user text is acceptable at all. Patterns err towards over-redacting.
"""

from __future__ import annotations

import re

MASK = "[REDACTED]"

# Order matters: specific token shapes first, so the generic ``name=value`` rule does not leave half of one.
_SECRETS = re.compile(
    "|".join(
        (
            r"sk-ant-[A-Za-z0-9_-]{8,}",  # Anthropic keys
            r"sk-[A-Za-z0-9_-]{16,}",  # OpenAI-style keys (sk-proj-…, sk-svcacct-…)
            r"AKIA[0-9A-Z]{16}",  # AWS access key ids
            r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",  # JWTs
            r"(?i:bearer)\s+\S+",
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",  # email addresses
        )
    )
)
# The name stays (``password=[REDACTED]``) so a reader sees what kind of thing was there.
_ASSIGNED = re.compile(r"""(?i)\b(api[_-]?key|secret|password|passwd|token)(["']?\s*[:=]\s*)\S+""")
# 13–19 digits, optionally grouped by spaces or dashes; Luhn-checked so order ids and timestamps survive.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")


def redact(text: str) -> str:
    """``text`` with API keys, bearer tokens, ``password=…``-style values, emails and card numbers masked."""
    text = _SECRETS.sub(MASK, text)
    text = _ASSIGNED.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    return _CARD.sub(_mask_card, text)


def _mask_card(match: re.Match[str]) -> str:
    digits = [int(ch) for ch in match.group() if ch.isdigit()]
    return MASK if _luhn(digits) else match.group()


def _luhn(digits: list[int]) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0
