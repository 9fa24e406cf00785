"""The ``x_gateway`` object a chat answer carried, for the ingresses that translate the answer back
(``/v1/messages``, ``/v1/responses``): what plugins put there (RAG's ``citations``, a post hook's
``plugins`` annotations) survives the translation; ``cost_usd`` does not, because each endpoint already
reports the cost its own way (the ``x-gateway-cost-usd`` header, or an SSE comment on a stream).
"""

from __future__ import annotations

from typing import Any

_OWN = frozenset({"cost_usd"})


def plugin_extra(raw: object) -> dict[str, Any] | None:
    """The answer's ``x_gateway`` without the gateway's own cost; None when nothing is left."""
    if not isinstance(raw, dict) or not raw:
        return None
    out = {k: v for k, v in raw.items() if k not in _OWN}
    return out or None
