"""``GET /admin/ledger``'s query: the ledger's rows of one tenant and time range, summed by the chosen
columns, as JSON-ready dicts or CSV. Money stays integer nano-USD until it is written out as a decimal
string, so totals are exact."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, select

from gateway.ledger.schema import ledger
from gateway.store.base import NANO

GROUPS = {
    "key": ledger.c.key_id,
    "model": ledger.c.model,
    "route": ledger.c.route,
    "user": ledger.c.end_user,
    "day": ledger.c.day,
}
"""``group_by`` names and their columns; the output field is the name (``user``, not ``end_user``)."""
SUMS = ("input_tokens", "output_tokens", "cached_tokens")


@dataclass(frozen=True, slots=True)
class Report:
    group_by: tuple[str, ...]
    rows: list[dict[str, Any]]
    total_nano: int

    @property
    def total_usd(self) -> str:
        return usd(self.total_nano)

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180, what spreadsheets expect
        columns = [*self.group_by, "requests", *SUMS, "cost_usd"]
        writer.writerow(columns)
        for row in self.rows:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
        return out.getvalue()


def usd(nano: int) -> str:
    """Nano-USD as a plain decimal string (``0.000123``, ``12.5``, ``0``)."""
    text = format((Decimal(nano) / NANO).normalize(), "f")
    return text if text != "-0" else "0"


def query(engine: Engine, tenant: str | None, start: float, end: float, group_by: Sequence[str]) -> Report:
    """Rows with ``start <= ts < end`` (of ``tenant``, or every tenant for None), grouped."""
    keys = [GROUPS[name].label(name) for name in group_by]
    cost = func.coalesce(func.sum(ledger.c.cost_nano), 0)
    sums = [func.coalesce(func.sum(ledger.c[name]), 0).label(name) for name in SUMS]
    statement = select(*keys, func.count().label("requests"), *sums, cost.label("cost_nano")).where(
        ledger.c.ts >= start, ledger.c.ts < end
    )
    if tenant is not None:
        statement = statement.where(ledger.c.tenant == tenant)
    if keys:
        statement = statement.group_by(*keys).order_by(*keys)
    rows: list[dict[str, Any]] = []
    total = 0
    with engine.connect() as conn:
        for found in conn.execute(statement).mappings():
            if not keys and found["requests"] == 0:
                continue
            nano = int(found["cost_nano"])
            total += nano
            row: dict[str, Any] = {name: found[name] for name in group_by}
            row["requests"] = int(found["requests"])
            row.update({name: int(found[name]) for name in SUMS})
            row["cost_usd"] = usd(nano)
            rows.append(row)
    return Report(tuple(group_by), rows, total)
