"""The in-process store's state file (gateway/store/durable.py): what a restart keeps, and the writer.

Each test works on a real SQLite file in tmp_path; "a restart" is a new ``MemoryStore`` opened on the
file the previous one wrote (and released).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from gateway import cli
from gateway.settings import Settings
from gateway.store.base import NANO, Ask, ScopeLimits, Settlement
from gateway.store.durable import StateFile, StateFileError
from gateway.store.memory import SPENT_RETENTION_S, MemoryStore

T0 = 1_700_000_000.0
DAY = 86_400
_ids = itertools.count()
TENANT = ScopeLimits("t", budget_nano=10 * NANO, period_start=0)
KEY = ScopeLimits("k:acme-1", rpm=100, tpm=100_000, budget_nano=NANO, period_start=int(T0) - 3600)


async def spend_once(
    store: MemoryStore, cost: int, *, tenant: str = "acme", now: float = T0, settle: bool = True
) -> None:
    """Admit and (unless ``settle`` is False) settle one request of ``cost`` nano-USD."""
    ask = Ask(f"req-{next(_ids)}", tenant, (TENANT, KEY), tokens=100, cost_nano=cost, now=now, lease_s=60)
    assert (await store.admit(ask)).admitted
    if settle:
        await store.settle(Settlement(ask.request_id, tenant, ask.scopes, 100, 80, cost, now))


async def spent(store: MemoryStore, scope: ScopeLimits, tenant: str = "acme") -> tuple[int, int]:
    s = await store.spend(tenant, scope, now=T0)
    return s.spent_nano, s.reserved_nano


def reopen(path: Path) -> tuple[MemoryStore, StateFile]:
    store = MemoryStore()
    return store, StateFile.open(path, store)


async def test_spend_and_keys_survive_a_restart_reservations_do_not(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store, state = reopen(path)
    await spend_once(store, 1_234_567)
    await spend_once(store, 2_000_000)
    await spend_once(store, 7, tenant="globex")
    await spend_once(store, 500_000, settle=False)  # in flight when the process ends
    await store.put_key("sha-a", {"id": "rt-a", "tenant": "acme", "budget": {"usd": 1, "period": "total"}})
    await store.put_key("sha-b", {"id": "rt-b", "tenant": "acme"})
    assert await store.delete_key("rt-b")
    before = (await spent(store, TENANT), await spent(store, KEY), await store.all_keys())
    version = await store.keys_version()
    await state.close()

    again, state = reopen(path)
    try:
        assert await spent(again, TENANT) == (3_234_567, 0) == (before[0][0], 0)
        assert await spent(again, KEY) == (3_234_567, 0)
        assert await spent(again, TENANT, tenant="globex") == (7, 0)
        assert before[0][1] == 500_000, "the reservation was live before the restart"
        assert (
            await again.all_keys()
            == before[2]
            == {"sha-a": {"id": "rt-a", "tenant": "acme", "budget": {"usd": 1, "period": "total"}}}
        )
        assert await again.keys_version() == version
        # and the restored store goes on from there
        await spend_once(again, 3)
        assert await spent(again, TENANT) == (3_234_570, 0)
    finally:
        await state.close()


async def test_the_writer_writes_what_settle_changed_within_an_interval(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = MemoryStore()
    state = StateFile.open(path, store, interval_s=0.05)
    job = asyncio.create_task(state.run())
    try:
        await spend_once(store, 42)
        await store.put_key("sha-a", {"id": "rt-a", "tenant": "acme"})
        reader = sqlite3.connect(path)  # another connection, as a restarted process would read it
        deadline = time.monotonic() + 10
        rows: list[tuple[str, str]] = []
        while time.monotonic() < deadline:
            rows = reader.execute("SELECT name, state FROM tenants").fetchall()
            keys = reader.execute("SELECT sha256 FROM keys").fetchall()
            if rows and keys:
                break
            await asyncio.sleep(0.02)
        reader.close()
        assert [(name, orjson.loads(s)) for name, s in rows] == [
            ("acme", {"spent": [["t", 0, 42], ["k:acme-1", KEY.period_start, 42]]})
        ]
        assert keys == [("sha-a",)]
        assert store.take_changed() == set(), "the writer took the change"
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        await state.close()


async def test_only_changed_tenants_are_taken_and_nothing_is_written_when_idle(tmp_path: Path) -> None:
    store = MemoryStore()
    state = StateFile.open(tmp_path / "state.sqlite3", store)
    try:
        await spend_once(store, 1, tenant="a")
        await spend_once(store, 1, tenant="b")
        await state.flush()
        await spend_once(store, 1, tenant="b")
        changes = state._take(full=False)
        assert set(changes.tenants) == {"b"} and changes.keys is None
        assert state._take(full=False).tenants == {}
    finally:
        await state.close()


async def test_periods_the_sweep_drops_leave_the_file_too(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store, state = reopen(path)
    old = ScopeLimits("t", budget_nano=NANO, period_start=int(T0))
    ask = Ask("r-old", "gone", (old,), tokens=0, cost_nano=5, now=T0, lease_s=60)
    await store.admit(ask)
    await store.settle(Settlement("r-old", "gone", (old,), 0, 0, 5, T0))
    await state.flush()
    # the next admission long after the period sweeps it (and the tenant, now empty) away
    later = T0 + SPENT_RETENTION_S + DAY
    await spend_once(store, 1, tenant="other", now=later)
    await state.flush()
    state.release()

    again, state = reopen(path)
    try:
        assert await again.spend("gone", old, now=later) == await MemoryStore().spend("gone", old)
        assert "gone" not in again.tenant_names()
    finally:
        await state.close()


async def test_a_failed_write_is_retried_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.sqlite3"
    store, state = reopen(path)
    await spend_once(store, 10, tenant="a")
    await state.flush()
    await spend_once(store, 20, tenant="b")
    outside = sqlite3.connect(path, isolation_level=None)
    outside.execute("DROP TABLE tenants")  # the next write fails: no such table
    with caplog.at_level(logging.ERROR, logger="gateway.store"):
        await state.flush()
    assert "write failed" in caplog.text
    outside.execute("CREATE TABLE tenants (name TEXT PRIMARY KEY, state TEXT NOT NULL)")
    outside.close()
    await state.flush()  # nothing changed since, yet it writes everything: a's row was dropped too
    state.release()

    again, state = reopen(path)
    try:
        assert await spent(again, TENANT, tenant="a") == (10, 0)
        assert await spent(again, TENANT, tenant="b") == (20, 0)
    finally:
        await state.close()


def test_a_second_process_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = StateFile.open(path, MemoryStore())
    with pytest.raises(StateFileError, match="in use by another gateway process"):
        StateFile.open(path, MemoryStore())
    first.release()
    StateFile.open(path, MemoryStore()).release()  # free again once released


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a database, just some bytes " * 200, "not a readable gateway state file"),
        (None, "written by a newer gateway"),
        (b"", None),  # an empty file is a new state file
    ],
)
def test_an_unusable_file_is_a_clear_error(
    tmp_path: Path, content: bytes | None, message: str | None
) -> None:
    path = tmp_path / "state.sqlite3"
    if content is None:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema', 99)")
        db.commit()
        db.close()
    else:
        path.write_bytes(content)
    if message is None:
        StateFile.open(path, MemoryStore()).release()
        return
    with pytest.raises(StateFileError, match=message) as raised:
        StateFile.open(path, MemoryStore())
    assert str(path) in str(raised.value)
    StateFile.open(tmp_path / "other.sqlite3", MemoryStore()).release()  # the lock was given back


def test_a_bad_row_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    StateFile.open(path, MemoryStore()).release()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO tenants VALUES ('acme', '{\"spent\": [[\"t\", 0]]}')")
    db.commit()
    db.close()
    with pytest.raises(StateFileError, match="not a readable gateway state file"):
        StateFile.open(path, MemoryStore())


def test_the_state_file_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budgets = tmp_path / "conf" / "budgets.yaml"
    beside = str(budgets.parent / ".gateway" / "state.sqlite3")
    assert Settings().state_file is None, "built in code (tests, embedders): memory only"
    assert Settings.from_env({"GATEWAY_BUDGETS": str(budgets)}).state_file == beside
    assert Settings.from_env({"GATEWAY_BUDGETS": str(budgets), "GATEWAY_STATE_FILE": ""}).state_file is None
    assert Settings.from_env({"GATEWAY_STATE_FILE": "/x/s.db"}).state_file == "/x/s.db"
    for settings in (
        Settings.from_env({"GATEWAY_STATE_FILE": ""}),
        Settings.from_env({"GATEWAY_BUDGETS": "b"}),
    ):
        assert Settings.from_env(settings.to_env()) == settings, "a worker process sees the same file"

    # serve --budgets moves the default with it; --state-file sets it, '' turns it off
    seen: list[str | None] = []
    monkeypatch.setattr(cli, "_serve", lambda args: seen.append(cli._settings(args).state_file) or 0)
    monkeypatch.delenv("GATEWAY_STATE_FILE", raising=False)
    cli.main(["serve", "--budgets", str(budgets)])
    cli.main(["serve", "--budgets", str(budgets), "--state-file", ""])
    cli.main(["serve", "--state-file", "/y/s.db"])
    assert seen == [beside, None, "/y/s.db"]


async def test_a_key_change_is_in_the_file_when_the_call_returns(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store, state = reopen(path)
    reader = sqlite3.connect(path)
    try:
        await store.put_key("sha-a", {"id": "rt-a", "tenant": "acme"})
        assert reader.execute("SELECT sha256 FROM keys").fetchall() == [("sha-a",)]
        assert await store.delete_key("rt-a")
        assert reader.execute("SELECT sha256 FROM keys").fetchall() == []
    finally:
        reader.close()
        await state.close()
    await store.put_key("sha-b", {"id": "rt-b", "tenant": "acme"})  # released: memory only again
