"""The spend ledger: one SQL row per settled request, and the audit table (README "Spend ledger").

Where it lives (``Settings.ledger_url``, from ``GATEWAY_LEDGER_URL``):

* set to a URL (``postgresql://…`` or ``sqlite:///…``): that database;
* set to ``off``: no ledger;
* unset, without Redis: an SQLite file beside budgets.yaml (``.gateway/ledger.sqlite3``), like the
  state file: one process (or its workers) is the whole gateway, so the file is the whole ledger;
* unset, with Redis: no ledger, and a warning at start. Replicas sharing Redis are one gateway, and a
  file per replica would be several partial ledgers that no report adds up; point every replica at one
  database (Postgres) with ``GATEWAY_LEDGER_URL``.
"""

from __future__ import annotations

import logging

from gateway.ledger.report import Report, query, usd
from gateway.ledger.writer import Ledger, engine_for, row_of
from gateway.metrics import Metrics

log = logging.getLogger("gateway.ledger")

__all__ = ["Ledger", "Report", "open_ledger", "query", "row_of", "usd"]


def open_ledger(url: str | None, metrics: Metrics, *, redis: bool) -> Ledger | None:
    """The running ledger for ``url`` (its writer thread started), or None when it is off."""
    if url is None:
        if redis:
            log.warning(
                "no spend ledger: with GATEWAY_REDIS_URL set, set GATEWAY_LEDGER_URL=postgresql://... "
                "(one database for every replica) or GATEWAY_LEDGER_URL=off to silence this"
            )
        return None
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    def on_change(pending: int, dropped: int) -> None:
        metrics.ledger_pending.set(pending)
        if dropped:
            metrics.ledger_dropped.inc(dropped)

    ledger = Ledger(engine_for(url), on_change=on_change)
    ledger.start()
    return ledger
