"""Opt-in content logging: a route's ``log_content`` puts redacted, truncated prompt and answer text on
its access log line. Off by default; the pipeline only calls in here when the plan says so.

Streams log the prompt only: their answer text is never assembled in one place on the hot path.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.config.model import ContentLogPolicy
from gateway.redact import redact

# Redacting a megabyte prompt to keep 2,000 characters of it would waste time; text well past the cut is
# dropped first. The slack is longer than any secret the patterns match, so none is split at that edge.
_SLACK = 1024


def content_for_log(policy: ContentLogPolicy, body: dict[str, Any], answer: bytes | None) -> dict[str, str]:
    """``{"prompt": …, "answer": …}`` for the log line; ``answer`` is the OpenAI-format response body."""
    out = {"prompt": clip(prompt_text(body), policy.max_chars)}
    if answer is not None:
        text = answer_text(answer)
        if text:
            out["answer"] = clip(text, policy.max_chars)
    return out


def clip(text: str, max_chars: int) -> str:
    """Redact, then cut: cutting first could leave a prefix of a secret too short for a pattern to match."""
    text = redact(text[: max_chars + _SLACK])
    return text if len(text) <= max_chars else text[:max_chars] + "…"


def prompt_text(body: dict[str, Any]) -> str:
    """Chat messages as ``role: text`` lines, or a completion prompt, or embedding input."""
    messages = body.get("messages")
    if isinstance(messages, list):
        lines = []
        for m in messages:
            if isinstance(m, dict):
                lines.append(f"{m.get('role', '?')}: {_text(m.get('content'))}")
        return "\n".join(lines)
    for key in ("prompt", "input"):
        if key in body:
            return _text(body[key])
    return ""


def answer_text(body: bytes) -> str:
    """The choices' text of a chat or completion answer; empty for embeddings or an unreadable body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        return ""
    parts = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        parts.append(
            _text(message.get("content")) if isinstance(message, dict) else _text(choice.get("text"))
        )
    return "\n".join(p for p in parts if p)


def _text(value: object) -> str:
    """Text out of a string, a list of content parts or strings; token-id arrays are not text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [_text(v.get("text")) if isinstance(v, dict) else _text(v) for v in value]
        return " ".join(p for p in parts if p)
    return ""
