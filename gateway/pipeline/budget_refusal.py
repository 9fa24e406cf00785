"""The 429 for a budget refusal, saying what happened.

A budget refuses a request whose worst case (prompt estimate + ``choices × max_tokens`` at the most
expensive candidate's prices) does not fit in what the budget has left. That is not the same as a
spent budget: a tenant with $0.0001 left is refused a request that leaves ``max_tokens`` unset (the
model's maximum output is assumed), yet a request asking for a few tokens fits. So the message says
the worst case, what is left, and the largest ``max_tokens`` that would fit; "spent" only when nothing
is left. Built only on a refusal: nothing here runs for an admitted request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal

from gateway.config.model import ModelConfig
from gateway.errors import BudgetExceeded
from gateway.store.base import NANO


def budget_refusal(
    who: str,
    left_nano: int,
    cost_nano: int,
    *,
    prompt_tokens: int,
    output_tokens: int,
    choices: int,
    bound_added: bool,
    candidates: Sequence[ModelConfig],
) -> BudgetExceeded:
    """``who``: ``tenant`` or ``key``; ``left_nano``: budget − spent − reserved for the period;
    the rest is the reservation as admission worked it out (``gateway.pipeline.admit.estimate``)."""
    if left_nano <= 0:
        return BudgetExceeded(
            f"The {who}'s budget for this period is spent (counting requests still in flight)."
        )
    assumed = (
        f"max_tokens was not set, so {output_tokens} output tokens were assumed"
        if bound_added
        else f"max_tokens {output_tokens}"
    )
    if choices > 1:
        assumed += f" for each of {choices} choices"
    head = (
        f"This request's worst-case cost (${usd(cost_nano)}: {assumed}) is more than the {who}'s "
        f"remaining budget for this period (${usd(left_nano)})."
    )
    if output_tokens == 0:  # embeddings: only the input costs
        return BudgetExceeded(head + " A shorter input would fit.")
    fits = largest_output(left_nano, prompt_tokens, choices, candidates)
    if fits >= 1:
        return BudgetExceeded(f"{head} A smaller max_tokens would fit: at most {fits}.")
    return BudgetExceeded(f"{head} No max_tokens fits: the prompt alone may cost more than that.")


def largest_output(
    left_nano: int, prompt_tokens: int, choices: int, candidates: Sequence[ModelConfig]
) -> int:
    """The largest output bound whose worst case (over the candidates) fits in ``left_nano``; 0: none."""
    best: int | None = None
    for deployment in candidates:
        price = deployment.price
        room = left_nano - _nano(prompt_tokens, price.input_per_mtok)
        per_token = _nano(choices, price.output_per_mtok)
        if room < 0:
            return 0
        if per_token <= 0:
            continue  # free output: any bound fits for this candidate
        bound = math.floor(room / per_token)
        while (
            bound > 0
            and math.ceil(_nano(prompt_tokens, price.input_per_mtok) + bound * per_token) > left_nano
        ):
            bound -= 1  # float rounding at the edge: admission rounds the worst case up
        best = bound if best is None else min(best, bound)
    return best if best is not None else 0


def usd(nano: int) -> str:
    text = format((Decimal(nano) / NANO).normalize(), "f")
    return text if text != "-0" else "0"


def _nano(tokens: int, per_mtok: float) -> float:
    return tokens * per_mtok * (NANO / 1_000_000)
