"""The ledger writer: one row per settled request, written in batches by a thread of its own.

``record`` (called where every request settles, after the answer was sent) builds a tuple and appends it
to a bounded deque: no await, no lock, no I/O. A daemon thread wakes every ``FLUSH_S`` (or when told
to), takes up to ``BATCH`` rows and inserts them in one transaction with ``ON CONFLICT DO NOTHING`` on
the request id, so a batch written twice (a commit whose reply was lost) counts once.

When the database is unreachable the rows stay queued, oldest first, and the thread retries with
backoff; ``gateway_ledger_pending`` shows how many wait. Past ``MAX_PENDING`` a new row is dropped,
counted in ``gateway_ledger_dropped_total`` and logged at ERROR with its request id, tenant and cost.
The same thread writes the audit rows (admin actions) through the same queue discipline.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.dialects import postgresql, sqlite

from gateway.ledger.schema import USER_MAX, audit, ledger, migrate
from gateway.store.base import NANO

log = logging.getLogger("gateway.ledger")

MAX_PENDING = 200_000
"""Rows kept while the database is unreachable (about 60 MB); past it they are dropped, counted."""
BATCH = 1000
FLUSH_S = 0.5
RETRY_MAX_S = 5.0

Row = tuple[Any, ...]
"""A ledger row: the values of ``ROW_COLUMNS`` in order (a tuple: the cheapest thing to build per request)."""
ROW_COLUMNS = (
    "request_id",
    "ts",
    "tenant",
    "key_id",
    "end_user",
    "route",
    "model",
    "provider",
    "endpoint",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "cost_nano",
    "status",
    "error_code",
    "cache",
    "parent_request_id",
)
_TS, _TENANT, _COST = 1, 2, 13


def engine_for(url: str) -> Engine:
    """``postgresql://`` is psycopg 3 (the driver the ``postgres`` extra installs)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        # WAL: replicas' workers and the admin reader share the file without blocking each other
        engine = create_engine(url, connect_args={"timeout": 10})
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)


class Ledger:
    def __init__(
        self,
        engine: Engine,
        *,
        max_pending: int = MAX_PENDING,
        flush_s: float = FLUSH_S,
        retry_max_s: float = RETRY_MAX_S,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self.engine = engine
        self._rows: deque[Row] = deque()
        self._audits: deque[dict[str, Any]] = deque()
        self._insert_sql = _insert_sql(engine)
        self._max_pending = max_pending
        self._flush_s = flush_s
        self._retry_max_s = retry_max_s
        self._on_change = on_change
        """Called by the writer thread with (pending, newly dropped): the metrics."""
        self._dropped_since = 0
        self._migrated = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._cycles = 0
        self.written = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._rows) + len(self._audits)

    # --- the request side: append only --------------------------------------------------------------

    def record(self, row: Row) -> None:
        if len(self._rows) >= self._max_pending:
            self._drop(row)
            return
        self._rows.append(row)

    def audit(self, row: dict[str, Any]) -> None:
        if len(self._audits) >= self._max_pending:
            self._drop((row.get("request_id"), row.get("ts"), row.get("tenant"), *[None] * 10, 0))
            return
        self._audits.append(row)
        self._wake.set()  # an admin action is rare: written at once

    def _drop(self, row: Row) -> None:
        self.dropped += 1
        self._dropped_since += 1
        log.error(
            "ledger row %s dropped (%d queued): tenant %s, cost %s USD not in the ledger",
            row[0],
            self._max_pending,
            row[_TENANT],
            Decimal(row[_COST]) / NANO,
        )

    # --- the writer thread --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread after one last write of what is queued; what is left is logged."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.pending:
            log.error("ledger database unreachable at shutdown: %d rows not written", self.pending)
        self.engine.dispose()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued now is written (tests, shutdown); False if it was not."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._idle:
            # a whole writer cycle that began after this call: a batch taken off the queue just before
            # it may still be on its way to the database
            after = self._cycles + 2
            while (self.pending or self._cycles < after) and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()
                self._idle.wait(min(left, 0.05))
        return not self.pending

    def _run(self) -> None:
        delay = 0.0  # the schema at once, so reports work before the first row
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                ok = self.write_pending()
            except Exception:  # a bug must not stop the only writer; what failed stays queued
                log.exception("writing the ledger failed")
                ok = False
            self._report()
            with self._idle:
                self._cycles += 1
                self._idle.notify_all()
            if stopping:
                return
            delay = self._flush_s if ok else min(max(delay, self._flush_s) * 2, self._retry_max_s)

    def _report(self) -> None:
        if self._on_change is not None:
            dropped, self._dropped_since = self._dropped_since, 0
            self._on_change(self.pending, dropped)

    def write_pending(self) -> bool:
        """Write every queued row, ``BATCH`` at a time; False at the first batch the database refused
        (that batch goes back to the front of its queue)."""
        if self._migrated and not self._rows and not self._audits:
            return True
        try:
            if not self._migrated:  # at start, and until the database answers once
                with self.engine.begin() as conn:
                    migrate(conn, time.time())
                self._migrated = True
            while self._audits:
                audits = [self._audits.popleft() for _ in range(min(BATCH, len(self._audits)))]
                try:
                    self._insert_audits(audits)
                except BaseException:
                    self._audits.extendleft(reversed(audits))
                    raise
            while self._rows:
                batch = [self._rows.popleft() for _ in range(min(BATCH, len(self._rows)))]
                try:
                    self._insert(batch)
                except BaseException:
                    self._rows.extendleft(reversed(batch))
                    raise
                self.written += len(batch)
        except Exception as exc:
            log.warning("ledger database unavailable (%s): %d rows wait", _short(exc), self.pending)
            return False
        return True

    def _insert(self, batch: Sequence[Row]) -> None:
        """One executemany of plain tuples: the driver's own batching, no per-row ORM-ish processing
        (a third of the cost of a Core insert of dicts)."""
        params = [(*r, _day(int(r[_TS] // 86400))) for r in batch]
        with self.engine.begin() as conn:
            conn.exec_driver_sql(self._insert_sql, params)

    def _insert_audits(self, batch: Sequence[dict[str, Any]]) -> None:
        make = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        with self.engine.begin() as conn:
            conn.execute(make(audit).on_conflict_do_nothing(index_elements=["id"]), list(batch))


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _insert_sql(engine: Engine) -> str:
    """``INSERT … ON CONFLICT (request_id) DO NOTHING``: the same SQL on SQLite (3.24+) and Postgres;
    only the placeholder differs (``?`` for sqlite3, ``%s`` for psycopg)."""
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    columns = (*ROW_COLUMNS, "day")
    marks = ", ".join([mark] * len(columns))
    return (
        f"INSERT INTO {ledger.name} ({', '.join(columns)}) VALUES ({marks}) "
        "ON CONFLICT (request_id) DO NOTHING"
    )


@functools.lru_cache(maxsize=8)
def _day(day_number: int) -> str:
    return datetime.fromtimestamp(day_number * 86400, UTC).strftime("%Y-%m-%d")


def row_of(ex: Any, cost_nano: int, now: float) -> Row:
    """The ledger row of a settled exchange (``gateway.context.Exchange``), in ``ROW_COLUMNS`` order."""
    usage = ex.usage
    principal = ex.principal
    deployment = ex.attempts.deployment
    user = ex.user
    return (
        ex.request_id,
        now,
        ex.tenant,
        principal.key_id if principal else None,
        user[:USER_MAX] if user else None,
        ex.route,
        ex.model,
        deployment.provider if deployment else None,
        ex.endpoint[:64],
        usage.prompt_tokens if usage else 0,
        usage.completion_tokens if usage else 0,
        usage.cached_tokens if usage else 0,
        usage.cache_write_tokens if usage else 0,
        cost_nano,
        ex.status,
        ex.error_code,
        ex.cache,
        principal.parent_request_id if principal else None,
    )
