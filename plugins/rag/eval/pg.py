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
    """Yield the connection URL of a fresh embedded Postgres; ``shared_buffers`` e.g. ``"1GB"`` (default:
    the sidecar's, ``embedded.DEFAULT_SHARED_BUFFERS``)."""
    from pgserver.postgres_server import get_server

    from plugins.rag import embedded

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        url = embedded.start(tmp, shared_buffers or embedded.DEFAULT_SHARED_BUFFERS)
        pgdata = Path(tmp) / "pg"
        try:
            yield url
        finally:
            get_server(pgdata, cleanup_mode="stop").cleanup()
