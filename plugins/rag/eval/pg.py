"""A throw-away embedded Postgres for the evaluation, the speed bench and their test.

Started in a temporary directory by the sidecar's own ``embedded.start`` and stopped before that
directory is removed: pgserver stops its server when the process exits, but by then the data directory
would be gone and the server left running (until Postgres notices its lock file is missing).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def throwaway(prefix: str, *, shared_buffers: str | None = None) -> Iterator[str]:
    """Yield the connection URL of a fresh embedded Postgres; ``shared_buffers`` e.g. ``"1GB"``."""
    from pgserver.postgres_server import get_server

    from plugins.rag import embedded

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        url = embedded.start(tmp)
        pgdata = Path(tmp) / "pg"
        try:
            if shared_buffers:  # read at server start: restart this server with it
                get_server(pgdata, cleanup_mode="stop").psql(
                    f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'"
                )
                get_server(pgdata, cleanup_mode="stop").cleanup()
                url = embedded.start(tmp)
            yield url
        finally:
            get_server(pgdata, cleanup_mode="stop").cleanup()
