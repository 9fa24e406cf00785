"""Vetting an upstream's usage before it is priced: an upstream is trusted to count, not to bill.

A reported usage is used as is only when every count is a non-negative integer, the cached and
cache-write parts fit inside the prompt, and the total is plausible for the request: at most

    (context window × inputs + choices × output bound) × (1 + USAGE_MARGIN)

where the context window is the deployment's ``context_window`` (``FALLBACK_WINDOW`` when unset),
``inputs`` the number of embedding inputs (1 otherwise), ``choices`` what the request asked for
(``n``, or ``best_of`` on ``/v1/completions``) and the output bound the request's ``max_tokens`` /
``max_completion_tokens``, else the deployment's ``max_output_tokens``, else the window. The margin
absorbs tokenizer differences and tokens a provider adds on its side (a system preamble, tool
definitions); an upstream whose counts pass that bound is not counting the request it was sent.

Otherwise the usage is an *anomaly* of one kind (``KINDS``, the bounded label of
``gateway_upstream_anomalies_total{kind}``): the gateway counts the tokens itself (``usage_source:
"counted"``), logs the upstream's numbers, and prices only its own count, so no negative, absurd or
non-numeric value ever reaches pricing, the store or Prometheus.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.model import ModelConfig
from gateway.pipeline.admit import choices, max_output
from gateway.providers.base import Operation, Usage

USAGE_MARGIN = 0.25
FALLBACK_WINDOW = 2_000_000
"""Context window assumed for a deployment without ``context_window`` (the largest offered today)."""

MALFORMED = "usage_malformed"
"""A count that is not an integer (a string, a bool, a fraction)."""
NEGATIVE = "usage_negative"
INCONSISTENT = "usage_inconsistent"
"""Cached plus cache-write tokens larger than the prompt they are part of."""
IMPLAUSIBLE = "usage_implausible"
"""More tokens than the request could have used (the bound above)."""
KINDS = (MALFORMED, NEGATIVE, INCONSISTENT, IMPLAUSIBLE)


def usage_bound(operation: Operation, body: Mapping[str, Any], deployment: ModelConfig | None) -> int:
    """The most tokens (prompt + completion) an upstream may plausibly report for this request."""
    window = (deployment.context_window if deployment is not None else None) or FALLBACK_WINDOW
    if operation is Operation.EMBEDDINGS:
        tokens = window * _inputs(body.get("input"))
    else:
        per_choice = (
            max_output(body, deployment)
            or (deployment.max_output_tokens if deployment is not None else None)
            or window
        )
        tokens = window + choices(operation, body) * per_choice
    return int(tokens * (1 + USAGE_MARGIN))


def _inputs(value: Any) -> int:
    """Embedding inputs: a list of strings or of token arrays is many; a string or one token array is one."""
    if isinstance(value, list) and value and isinstance(value[0], str | list):
        return len(value)
    return 1


def usage_anomaly(
    usage: Usage, operation: Operation, body: Mapping[str, Any], deployment: ModelConfig | None
) -> str | None:
    """What is wrong with an upstream's usage (one of ``KINDS``), or None if it may be priced."""
    if usage.malformed:
        return MALFORMED
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    cached, written = usage.cached_tokens, usage.cache_write_tokens
    if prompt < 0 or completion < 0 or cached < 0 or written < 0:
        return NEGATIVE
    if cached + written > prompt:
        return INCONSISTENT
    total = prompt + completion
    window = deployment.context_window if deployment is not None else None
    # The full bound is worked out only past the window: the usual answer is far below it.
    if total > (window or FALLBACK_WINDOW) and total > usage_bound(operation, body, deployment):
        return IMPLAUSIBLE
    return None
