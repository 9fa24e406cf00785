"""``store_failure: open``, bounded: what one replica may spend per tenant while the store is unreachable.

When the shared store cannot be reached, an ``open`` replica admits on its own in-process store
(the fallback) instead, against scopes of its own (``local_ask``): the same rate limits, and for
every scope that has a budget, a budget of the smaller of

* ``open_spend_usd`` (routes.yaml ``defaults``, 1.0 USD unless set), and
* the scope's remaining budget as the shared store last reported it (``LastKnown``; every
  acknowledged settlement reports the spent totals), or the whole budget if it never did.

Local spend is counted per budget period (the scope's own period; for a ``total`` budget, for as long
as the process runs), whatever the number or length of the outages in it: a store that flaps does
not open a fresh allowance each time. So one replica serves a tenant at most ``open_spend_usd`` per
budget period without the store, and never more than what it last knew was left. Everything served
this way is also settled in the shared store (queued until it answers, counted once: see
``gateway/pipeline/spend.py``), so the shared totals catch up.

Past the allowance the answer is the closed policy's, 503 ``store_unavailable``; past the last known
remaining budget it is 429 ``budget_exceeded``, as it would have been with the store up.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.store.base import Ask, ScopeLimits


class LastKnown:
    """Each budget scope's spent total (nano-USD) as the shared store last reported it.

    One entry per (tenant, scope), replaced when a newer period's total arrives, so it holds no more
    entries than there are budget scopes."""

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], tuple[int, int]] = {}
        """(tenant, scope) → (period start, spent nano)."""

    def note(self, tenant: str, scope: ScopeLimits, spent_nano: int) -> None:
        key = (tenant, scope.scope)
        kept = self._spent.get(key)
        if kept is None or kept[0] <= scope.period_start:
            self._spent[key] = (scope.period_start, spent_nano)

    def remaining(self, tenant: str, scope: ScopeLimits) -> int | None:
        """What is left of the scope's budget this period, as last reported; None for no budget."""
        if scope.budget_nano is None:
            return None
        kept = self._spent.get((tenant, scope.scope))
        spent = kept[1] if kept is not None and kept[0] == scope.period_start else 0
        return max(scope.budget_nano - spent, 0)


def local_ask(ask: Ask, open_spend_nano: int, known: LastKnown) -> Ask:
    """The ask the fallback store admits while the shared one is unreachable (see the module docstring)."""
    scopes = []
    for scope in ask.scopes:
        remaining = known.remaining(ask.tenant, scope)
        if remaining is not None:
            scope = replace(scope, budget_nano=min(open_spend_nano, remaining))
        scopes.append(scope)
    return replace(ask, scopes=tuple(scopes))


def refused_by_allowance(ask: Ask, refused_scope: str | None, open_spend_nano: int, known: LastKnown) -> bool:
    """Whether a local budget refusal came from the open-mode allowance (503), not from a budget last
    known to be spent (429)."""
    for scope in ask.scopes:
        if scope.scope == refused_scope:
            remaining = known.remaining(ask.tenant, scope)
            return remaining is None or remaining > open_spend_nano
    return True
