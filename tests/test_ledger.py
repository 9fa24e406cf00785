"""The spend ledger (gateway/ledger): batching, idempotency, rows that wait while the database is down,
and ``GET /admin/ledger`` (group_by, CSV, roles) through a live gateway and the openai SDK.

tests/test_ledger_replicas.py checks the sums across 4 replicas with Postgres as the ledger.
"""

from __future__ import annotations

import csv
import io
import math
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import KEY_ACME, KEY_GLOBEX, ROUTES, GatewayFactory, sha
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.exc import OperationalError
from upstreams import FakeOpenAI

from gateway.ledger import writer
from gateway.ledger.schema import audit, ledger
from gateway.ledger.writer import ROW_COLUMNS, Ledger, engine_for
from gateway.settings import Settings

KEY_ACME_ADMIN = "sk-test-acme-admin"
KEY_ACME_2 = "sk-test-acme-two"
ADMIN = "operator-secret"

BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 100, period: monthly}}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
      - {{id: acme-2, sha256: "{sha(KEY_ACME_2)}", role: user}}
      - {{id: acme-admin, sha256: "{sha(KEY_ACME_ADMIN)}", role: admin}}
  globex:
    models: ["mock-*"]
    keys:
      - {{id: globex-1, sha256: "{sha(KEY_GLOBEX)}", role: user}}
"""


def row(request_id: str, tenant: str = "acme", cost_nano: int = 1500, **more: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "request_id": request_id,
        "ts": time.time(),
        "tenant": tenant,
        "key_id": "acme-1",
        "end_user": None,
        "route": "r",
        "model": "m",
        "provider": "p",
        "endpoint": "/v1/chat/completions",
        "input_tokens": 10,
        "output_tokens": 5,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "cost_nano": cost_nano,
        "status": 200,
        "error_code": None,
        "cache": "miss",
        "parent_request_id": None,
    }
    values.update(more)
    return tuple(values[c] for c in ROW_COLUMNS)


def count(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        n, total = conn.execute(select(func.count(), func.coalesce(func.sum(ledger.c.cost_nano), 0))).one()
    engine.dispose()
    return int(n), int(total)


def test_rows_are_written_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    monkeypatch.setattr(writer, "BATCH", 100)
    engine = engine_for(url)
    inserts: list[int] = []

    @event.listens_for(engine, "before_cursor_execute")
    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.startswith("INSERT INTO ledger "):
            inserts.append(len(params) if many else 1)

    book = Ledger(engine)
    for i in range(250):
        book.record(row(f"req_{i}"))
    assert book.write_pending()
    assert book.pending == 0
    assert count(url) == (250, 250 * 1500)
    assert sum(inserts) == 250 and len(inserts) <= 3 + 250 // 100  # a few statements, not 250
    print(f"\n250 rows in {len(inserts)} insert statements")
    book.close()


def test_a_row_counts_once_by_request_id(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    book = Ledger(engine_for(url))
    book.record(row("req_a"))
    book.record(row("req_a"))  # the same settlement twice in one batch
    assert book.write_pending()
    book.record(row("req_a", cost_nano=999))  # and again later (a batch re-sent after a lost reply)
    book.record(row("req_b"))
    assert book.write_pending()
    assert count(url) == (2, 3000)
    book.close()


def test_rows_wait_while_the_database_is_down_then_are_written(tmp_path: Path) -> None:
    """The database cannot be opened (its directory does not exist yet): rows stay queued, counted in
    the pending gauge; once it can, the writer thread writes them all, none twice."""
    place = tmp_path / "not-yet"
    url = f"sqlite:///{place}/ledger.sqlite3"
    seen: list[tuple[int, int]] = []
    book = Ledger(engine_for(url), flush_s=0.05, retry_max_s=0.1, on_change=lambda p, d: seen.append((p, d)))
    book.start()
    for i in range(30):
        book.record(row(f"req_{i}"))
    assert not book.flush(timeout_s=0.5)  # bounded wait: the database is down
    assert book.pending == 30 and book.written == 0
    assert (30, 0) in seen  # gateway_ledger_pending showed them
    place.mkdir()
    assert book.flush(timeout_s=10)
    assert count(url) == (30, 45000)
    assert seen[-1] == (0, 0)
    book.close()


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    book = Ledger(
        engine_for(f"sqlite:///{tmp_path}/nowhere/l.sqlite3"),
        max_pending=3,
        on_change=lambda p, d: seen.append((p, d)),
    )
    for i in range(5):
        book.record(row(f"req_{i}"))
    assert book.pending == 3 and book.dropped == 2
    book._report()
    assert seen == [(3, 2)]


def test_settings_choose_the_ledger_database(tmp_path: Path) -> None:
    budgets = str(tmp_path / "budgets.yaml")
    alone = Settings.from_env({"GATEWAY_BUDGETS": budgets})
    assert alone.ledger_url == f"sqlite:///{tmp_path}/.gateway/ledger.sqlite3"
    shared = Settings.from_env({"GATEWAY_BUDGETS": budgets, "GATEWAY_REDIS_URL": "redis://127.0.0.1:1"})
    assert shared.ledger_url is None  # a file per replica would not be one ledger
    pg = "postgresql://u@127.0.0.1:5/db"
    assert Settings.from_env({"GATEWAY_REDIS_URL": "redis://x", "GATEWAY_LEDGER_URL": pg}).ledger_url == pg
    assert Settings.from_env({"GATEWAY_BUDGETS": budgets, "GATEWAY_LEDGER_URL": "off"}).ledger_url is None
    assert Settings.from_env(alone.to_env()).ledger_url == alone.ledger_url


# --- through a live gateway ---------------------------------------------------------------------------


def nano(cost: str) -> int:
    return math.ceil(Decimal(cost) * 1_000_000_000)


@pytest.fixture
def live(gateway_factory: GatewayFactory, tmp_path: Path) -> tuple[Any, str, list[tuple[str, str]]]:
    """A gateway with an SQLite ledger, after a few requests: (gateway, ledger url, (request id, cost))."""
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    fake = FakeOpenAI()
    gw = gateway_factory(ROUTES, BUDGETS, fake.transport, admin_key=ADMIN, ledger_url=url)
    received: list[tuple[str, str]] = []
    calls: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        (KEY_ACME, {"user": "alice"}, {}),
        (KEY_ACME, {"user": "alice"}, {}),
        (KEY_ACME, {}, {"x-gateway-user": "bob"}),
        (KEY_ACME_2, {"user": "alice"}, {}),
        (KEY_ACME_2, {}, {}),
        (KEY_GLOBEX, {"user": "carol"}, {}),  # globex may use mock-* only: a 403, settled too
    ]
    for key, extra, headers in calls:
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, default_headers=headers)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Hi"}],
                **extra,
            )
            received.append((raw.headers["x-request-id"], raw.headers["x-gateway-cost-usd"]))
        except openai.PermissionDeniedError:
            pass
        client.close()
    # no key: refused before there is a tenant to charge, so no row
    anonymous = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert anonymous.status_code == 401
    wait_rows(gw, url, len(calls))
    return gw, url, received


def wait_rows(gw: Any, url: str, n: int) -> None:
    """The rows are written off the request path: flush the app's ledger (bounded)."""
    state = gw.app.state.gateway
    deadline = time.monotonic() + 10
    written = 0
    while written < n:
        assert time.monotonic() < deadline, f"ledger has {written} of {n} rows"
        state.ledger.flush(timeout_s=1)
        try:
            written = count(url)[0]
        except OperationalError:  # the writer thread has not created the table yet
            time.sleep(0.05)


def report(gw: Any, key: str = ADMIN, **params: str) -> httpx.Response:
    return httpx.get(gw.url + "/admin/ledger", params=params, headers={"authorization": f"Bearer {key}"})


def test_every_settled_request_has_a_row_with_its_cost(live: tuple[Any, str, list[tuple[str, str]]]) -> None:
    _gw, url, received = live
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = {r.request_id: r for r in conn.execute(select(ledger))}
    engine.dispose()
    assert len(rows) == 6 and "none" not in {r.tenant for r in rows.values()}
    for request_id, cost in received:
        assert rows[request_id].cost_nano == nano(cost)  # what the client was told, to the nano-dollar
    users = sorted((r.key_id, r.end_user or "") for r in rows.values() if r.tenant == "acme")
    assert users == [
        ("acme-1", "alice"),
        ("acme-1", "alice"),
        ("acme-1", "bob"),
        ("acme-2", ""),
        ("acme-2", "alice"),
    ]
    refused = [r for r in rows.values() if r.tenant == "globex"]
    assert [(r.status, r.cost_nano, r.end_user) for r in refused] == [(403, 0, "carol")]


def test_group_by_combinations_sum_to_the_same_total(live: tuple[Any, str, list[tuple[str, str]]]) -> None:
    gw, _, received = live
    total = sum(Decimal(c) for _, c in received)
    combos = ["", "key", "user", "day", "model", "route", "key,day", "user,key", "key,model,route,user,day"]
    for group_by in combos:
        answer = report(gw, tenant="acme", group_by=group_by)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        names = [n for n in group_by.split(",") if n]
        assert body["tenant"] == "acme" and body["group_by"] == names
        assert Decimal(body["total_cost_usd"]) == total
        assert sum(Decimal(r["cost_usd"]) for r in body["rows"]) == total
        assert sum(r["requests"] for r in body["rows"]) == 5
        for r in body["rows"]:
            assert list(r) == [
                *names,
                "requests",
                "input_tokens",
                "output_tokens",
                "cached_tokens",
                "cost_usd",
            ]
    by_key = {r["key"]: r for r in report(gw, tenant="acme", group_by="key").json()["rows"]}
    assert by_key["acme-1"]["requests"] == 3 and by_key["acme-2"]["requests"] == 2
    by_user = {r["user"]: r["requests"] for r in report(gw, tenant="acme", group_by="user").json()["rows"]}
    assert by_user == {"alice": 3, "bob": 1, None: 1}


def test_csv_opens_as_a_spreadsheet(live: tuple[Any, str, list[tuple[str, str]]]) -> None:
    gw, _, received = live
    answer = report(gw, tenant="acme", group_by="key,day", format="csv")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"].startswith('attachment; filename="ledger-acme-')
    assert answer.text.endswith("\r\n")
    table = list(csv.reader(io.StringIO(answer.text)))
    assert table[0] == [
        "key",
        "day",
        "requests",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cost_usd",
    ]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert [(r[0], r[1], r[2]) for r in table[1:]] == [("acme-1", today, "3"), ("acme-2", today, "2")]
    assert sum(Decimal(r[6]) for r in table[1:]) == sum(Decimal(c) for _, c in received)
    print("\n" + answer.text)


def test_ledger_roles_ranges_and_bad_parameters(live: tuple[Any, str, list[tuple[str, str]]]) -> None:
    gw, _, _ = live
    own = report(gw, KEY_ACME_ADMIN, group_by="key")
    assert own.status_code == 200 and own.json()["tenant"] == "acme"
    assert report(gw, KEY_ACME_ADMIN, tenant="globex").status_code == 403
    user = report(gw, KEY_ACME, tenant="acme")
    assert user.status_code == 403 and user.json()["error"]["type"] == "permission_error"
    everyone = report(gw, group_by="key").json()
    assert everyone["tenant"] is None and {r["key"] for r in everyone["rows"]} == {
        "acme-1",
        "acme-2",
        "globex-1",
    }
    assert report(gw, tenant="acme", **{"from": "2000-01-01", "to": "2000-01-31"}).json()["rows"] == []
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert report(gw, tenant="acme", **{"from": day, "to": day}).json()["total_cost_usd"] != "0"
    for params, param in [
        ({"group_by": "key,color"}, "group_by"),
        ({"group_by": "key,key"}, "group_by"),
        ({"format": "xlsx"}, "format"),
        ({"from": "yesterday"}, "from"),
        ({"tenant": "a/b"}, "tenant"),
    ]:
        bad = report(gw, tenant="acme", **params) if "tenant" not in params else report(gw, **params)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, (params, bad.text)


def test_admin_actions_go_to_the_audit_table(live: tuple[Any, str, list[tuple[str, str]]]) -> None:
    gw, url, _ = live
    made = httpx.post(
        gw.url + "/admin/keys",
        json={"tenant": "acme", "id": "acme-new"},
        headers={"authorization": f"Bearer {KEY_ACME_ADMIN}", "x-request-id": "audit-1"},
    )
    assert made.status_code in (200, 201), made.text
    gw.app.state.gateway.ledger.flush(timeout_s=5)
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = list(conn.execute(select(audit).where(audit.c.request_id == "audit-1")))
    engine.dispose()
    assert len(rows) == 1
    entry = rows[0]
    assert (entry.kind, entry.action, entry.who, entry.role, entry.tenant, entry.status) == (
        "admin",
        "key.create",
        "acme/acme-admin",
        "admin",
        "acme",
        made.status_code,
    )
    assert "acme-new" in entry.target and "sk-" not in entry.target  # never a secret
