"""A pre hook's change to a ``/v1/messages`` request, mapped back onto the native Anthropic body.

Hooks see the OpenAI form (``to_openai_request``), which has no slot for much of a Messages body
(``cache_control`` on blocks, ``thinking``, ``top_k``, ``metadata`` beyond ``user_id``, ``service_tier``,
block-level citations…). So a modification is not taken as a new body: it is laid over the native one,
part by part, and only the parts the hook changed are replaced. A message the hook left as it was keeps
its native form (and its ``cache_control``); a changed one takes the translation of the hook's version.
"""

from __future__ import annotations

from typing import Any

from gateway.providers.anthropic_translate import to_anthropic_request

# OpenAI field → Anthropic field, copied when the hook changed it.
_SCALARS = (("max_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"))


def _set(out: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        out.pop(key, None)
    else:
        out[key] = value


def remap(native: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``native`` with what changed between the hook's view ``before`` and its answer ``after``."""
    if after == before:
        return native
    out = dict(native)
    was, now = to_anthropic_request(before), to_anthropic_request(after)
    if now["messages"] != was["messages"]:
        kept = native.get("messages") or []
        if len(kept) == len(was["messages"]):
            # aligned one to one: untouched messages keep their native blocks
            out["messages"] = [
                kept[i] if message == was["messages"][i] else _merged(kept[i], was["messages"][i], message)
                for i, message in enumerate(now["messages"])
            ]
        else:
            out["messages"] = now["messages"]
    if now.get("system") != was.get("system"):
        _set(out, "system", _system(native.get("system"), was.get("system"), now.get("system")))
    for key in ("tools", "tool_choice"):
        if now.get(key) != was.get(key):
            _set(out, key, now.get(key))
    for theirs, ours in _SCALARS:
        if after.get(theirs) != before.get(theirs):
            _set(out, ours, after.get(theirs))
    if after.get("stop") != before.get("stop"):
        stop = after.get("stop")
        _set(out, "stop_sequences", [stop] if isinstance(stop, str) else stop or None)
    if after.get("user") != before.get("user"):
        metadata = dict(native.get("metadata") or {})
        _set(metadata, "user_id", after.get("user"))
        _set(out, "metadata", metadata or None)
    return out


def _texts(content: Any) -> list[str] | None:
    """The texts of a message's content: a string is one; None if any block is not text."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return [str(b.get("text") or "") for b in content]
    return None


def _merged(native: Any, was: dict[str, Any], now: dict[str, Any]) -> Any:
    """A message whose text the hook changed: the native message with those texts replaced in their own
    blocks, so blocks the hook could not see (documents, ``cache_control``, citations) stay. When the
    change is more than text (blocks added, removed, retyped), the hook's version as translated."""
    before, after = was.get("content"), now.get("content")
    if not isinstance(native, dict) or was.get("role") != now.get("role"):
        return now
    content = native.get("content")
    if isinstance(content, str):
        return {**native, "content": after} if isinstance(after, str) else now
    old, new = _texts(before), _texts(after)
    if not isinstance(content, list) or old is None or new is None or len(old) != len(new):
        return now
    blocks = list(content)
    used: set[int] = set()
    for previous, text in zip(old, new, strict=True):
        at = next(
            (
                i
                for i, b in enumerate(blocks)
                if i not in used
                and isinstance(b, dict)
                and b.get("type") == "text"
                and b.get("text") == previous
            ),
            None,
        )
        if at is None:
            return now
        used.add(at)
        if text != previous:
            blocks[at] = {**blocks[at], "text": text}
    return {**native, "content": blocks}


def _system(native: Any, was: Any, now: Any) -> Any:
    """A system prompt the hook changed. Native text blocks (with their ``cache_control``) stay when the
    hook only added text before or after them (the usual augmentation); otherwise one text block with the
    hook's text, keeping the last native block's ``cache_control`` (where a prompt's cache breakpoint is)."""
    if not isinstance(native, list) or not isinstance(now, str) or not isinstance(was, str):
        return now
    at = now.find(was) if was else -1
    if at >= 0:
        before, after = now[:at].rstrip("\n"), now[at + len(was) :].lstrip("\n")
        head = [{"type": "text", "text": before}] if before else []
        tail = [{"type": "text", "text": after}] if after else []
        return [*head, *native, *tail]
    block: dict[str, Any] = {"type": "text", "text": now}
    last = native[-1] if native and isinstance(native[-1], dict) else {}
    if "cache_control" in last:
        block["cache_control"] = last["cache_control"]
    return [block]
