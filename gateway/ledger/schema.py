"""The ledger database's tables and their migrations, for SQLite and Postgres through one code path.

Migrations are numbered steps of ``CREATE TABLE/INDEX IF NOT EXISTS``, recorded in ``ledger_schema``:
each step runs once, and running one twice (two replicas starting together) is harmless. That is all a
two-table, append-only schema needs; alembic would add a dependency, a config file and a scripts
directory for the same effect.

Money is an integer number of nano-USD (``cost_nano``): the store's own unit, exact on every backend
(SQLite has no decimal type), so the ledger's sum is the store's spend to the nano-dollar. The API
shows it as a decimal string. Time is epoch seconds (``ts``) plus the UTC day (``day``, YYYY-MM-DD),
so grouping by day is a plain column on both databases.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
)
from sqlalchemy.engine import Connection

metadata = MetaData()

USER_MAX = 128
"""End-user ids longer than this are clipped (the client chose them)."""

ledger = Table(
    "ledger",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("ts", Double, nullable=False),
    Column("day", String(10), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("key_id", String(64)),
    Column("end_user", String(USER_MAX)),
    Column("route", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("provider", String(128)),
    Column("endpoint", String(64), nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False),
    Column("cost_nano", BigInteger, nullable=False),
    Column("status", Integer, nullable=False),
    Column("error_code", String(64)),
    Column("cache", String(16), nullable=False),
    Column("parent_request_id", String(64)),
)

audit = Table(
    "audit",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("request_id", String(128), nullable=False),
    Column("ts", Double, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("action", String(64), nullable=False),
    Column("who", String(160), nullable=False),
    Column("role", String(32)),
    Column("tenant", String(64)),
    Column("target", Text),
    Column("status", Integer, nullable=False),
)

schema_version = Table(
    "ledger_schema",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_ts", Double, nullable=False),
)

# Each step is idempotent by itself; the version table says which already ran.
STEPS: list[list[Table | Index]] = [
    [
        ledger,
        audit,
        Index("ledger_tenant_ts", ledger.c.tenant, ledger.c.ts),
        Index("audit_ts", audit.c.ts),
    ],
]


def migrate(conn: Connection, now: float) -> int:
    """Bring the schema up to date; returns its version."""
    schema_version.create(conn, checkfirst=True)
    done = set(conn.scalars(select(schema_version.c.version)))
    for version, step in enumerate(STEPS, start=1):
        if version in done:
            continue
        for item in step:
            item.create(conn, checkfirst=True)
        conn.execute(schema_version.insert().values(version=version, applied_ts=now))
    return len(STEPS)
