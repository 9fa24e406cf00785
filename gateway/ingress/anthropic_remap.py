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
                kept[i] if i < len(kept) and message == was["messages"][i] else message
                for i, message in enumerate(now["messages"])
            ]
        else:
            out["messages"] = now["messages"]
    for key in ("system", "tools", "tool_choice"):
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
