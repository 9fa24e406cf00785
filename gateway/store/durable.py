"""The in-process store's state file: spend and run-time keys survive a restart without Redis.

The ``MemoryStore`` stays the only thing a request touches (settle marks its tenant changed, nothing
more). Once a second ``StateFile.run`` copies what changed, on the event loop, where nothing else runs
meanwhile so the copy is consistent, and one dedicated thread writes it to SQLite in one transaction
(WAL, ``synchronous=FULL``). A graceful shutdown writes everything once more after the last settlement.

What a ``kill -9`` (or a power cut) can lose: the spend settled since the last write, at most one
interval (``FLUSH_INTERVAL_S``) plus the time that write takes. Run-time keys lose nothing: a key
put or deleted is written before the admin API answers (``MemoryStore.keys_changed``), so a revoked
key never comes back. Requests in flight at a crash are not charged at all (their answers were never
settled). What is not kept: live reservations (their holders die with the process; restoring them
would only block budget until their lease ends), rate-limit windows (a restart lets a key start a
fresh minute) and the response cache.

One file belongs to one process: ``<file>.lock`` is held (``flock``) while it is open, and a second
gateway on the same file is refused at start-up with a clear message, as is a file SQLite cannot read.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.store.memory import MemoryStore

log = logging.getLogger("gateway.store")

FLUSH_INTERVAL_S = 1.0
SCHEMA = 1

_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    # A tenant's durable state as JSON: {"spent": [[scope, period_start, nano], ...]}
    "CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS keys (sha256 TEXT PRIMARY KEY, record TEXT NOT NULL)",
)


class StateFileError(Exception):
    """The state file cannot be used (unreadable, from a newer gateway, or in use); the message says why."""


@dataclass(slots=True)
class _Changes:
    tenants: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """name → state (copied); None = delete the row."""
    keys: dict[str, dict[str, Any]] | None = None
    """sha256 → record (copied), all of them, when they changed."""
    keys_version: int = 0
    full: bool = False
    """Rows not in ``tenants`` are deleted (a full snapshot)."""


class StateFile:
    """A ``MemoryStore`` mirrored to an SQLite file. ``open`` loads it; ``run`` writes; ``close`` ends."""

    def __init__(self, path: Path, store: MemoryStore, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.path = path
        self._store = store
        self._interval_s = interval_s
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-state")
        """One writer thread: writes run one at a time, in the order their changes were taken."""
        self._keys_written = -1
        self._full_next = False
        """A write failed: the next one writes everything, so nothing it carried is lost."""

    @classmethod
    def open(cls, path: str | os.PathLike[str], store: MemoryStore, **kwargs: Any) -> StateFile:
        """Lock the file, load it into ``store``; ``StateFileError`` when it cannot be used."""
        state = cls(Path(path), store, **kwargs)
        try:
            state._lock()
            state._load()
            store.keys_changed = state.flush  # a key change is written before the admin API answers
        except BaseException:
            state.release()
            raise
        return state

    # -- start-up -------------------------------------------------------------------------------------------

    def _lock(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateFileError(f"{self.path}: cannot create the state file: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateFileError(
                f"{self.path}: in use by another gateway process (pid {holder}); the in-process store "
                "serves one process: stop the other one, or give this one its own GATEWAY_STATE_FILE"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _load(self) -> None:
        try:
            db = self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut too, once a second
            for ddl in _TABLES:
                db.execute(ddl)
            row = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA,))
            elif row[0] > SCHEMA:
                raise StateFileError(
                    f"{self.path}: written by a newer gateway (schema {row[0]}, this one reads {SCHEMA})"
                )
            row = db.execute("SELECT value FROM meta WHERE name = 'keys_version'").fetchone()
            keys_version = row[0] if row else 0
            tenants = {name: orjson.loads(s) for name, s in db.execute("SELECT name, state FROM tenants")}
            keys = {sha: orjson.loads(r) for sha, r in db.execute("SELECT sha256, record FROM keys")}
            self._store.restore(tenants, keys, keys_version)
        except StateFileError:
            raise
        except (sqlite3.Error, orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
            raise StateFileError(
                f"{self.path}: not a readable gateway state file ({exc}); move it away to start with "
                "no recorded spend, or point GATEWAY_STATE_FILE elsewhere"
            ) from exc
        self._keys_written = keys_version
        log.info("state file %s: %d tenants, %d run-time keys loaded", self.path, len(tenants), len(keys))

    # -- writing --------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write what changed every interval, until cancelled. A failed write is retried next time."""
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()

    async def flush(self, *, full: bool = False) -> None:
        full, self._full_next = full or self._full_next, False
        changes = self._take(full)
        if not (changes.tenants or changes.keys is not None or full):
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._write, changes)
        except (sqlite3.Error, OSError) as exc:
            log.error("state file %s: write failed, retrying in %.0f s: %s", self.path, self._interval_s, exc)
            self._full_next = True
        else:
            if changes.keys is not None:
                self._keys_written = changes.keys_version

    def _take(self, full: bool) -> _Changes:
        """Copy the changed state; runs on the event loop, where no settle can interleave with it."""
        store = self._store
        names = store.take_changed()
        if full:
            names.update(store.tenant_names())
        changes = _Changes(full=full)
        for name in names:
            changes.tenants[name] = store.dump_tenant(name)
        version, keys = store.dump_keys()
        if full or version != self._keys_written:
            changes.keys, changes.keys_version = keys, version
        return changes

    def _write(self, changes: _Changes) -> None:
        """One transaction, on the writer thread (JSON is encoded here, off the event loop)."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            if changes.full:
                db.execute("DELETE FROM tenants")
            for name, state in changes.tenants.items():
                if state is None:
                    db.execute("DELETE FROM tenants WHERE name = ?", (name,))
                else:
                    db.execute("INSERT OR REPLACE INTO tenants VALUES (?, ?)", (name, orjson.dumps(state)))
            if changes.keys is not None:
                db.execute("DELETE FROM keys")
                rows = [(sha, orjson.dumps(record)) for sha, record in changes.keys.items()]
                db.executemany("INSERT INTO keys VALUES (?, ?)", rows)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('keys_version', ?)", (changes.keys_version,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # BEGIN itself may be what failed
                db.execute("ROLLBACK")
            raise

    # -- shutdown -------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Write everything once more (after the last settlement), then release the file."""
        try:
            await self.flush(full=True)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown)
            self.release()

    def release(self) -> None:
        """Close the file and unlock it, writing nothing more."""
        self._store.keys_changed = None
        self._thread.shutdown(wait=True)
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
