"""The RAG sidecar's own environment variables (besides the SDK's PLUGIN_TOKEN, GATEWAY_URL,
PLUGIN_DATA_DIR), read once at start-up.

- ``RAG_DATABASE_URL``: a Postgres server with pgvector (``postgresql://...``); unset, the sidecar starts
  its embedded Postgres in ``PLUGIN_DATA_DIR`` (default ``.gateway/plugins/rag``).
- ``RAG_PG_SHARED_BUFFERS`` (default ``512MB``): the embedded Postgres's ``shared_buffers`` (its page
  cache; applied by a restart at start-up when it differs). A ``RAG_DATABASE_URL`` server keeps its own.
- ``RAG_EMBEDDING_MODEL`` (default ``text-embedding-3-small``): the model named in the sidecar's
  ``/v1/embeddings`` calls through the gateway; the gateway's routes decide which deployment serves it.
- ``RAG_EMBEDDING_DIMENSIONS`` (default 256): the vector size asked for and stored (``vector(N)``); fixed
  for a database once it has chunks.
- ``RAG_EMBEDDING_BATCH`` (default 64): inputs per embeddings call.
- ``RAG_CHUNK_TOKENS`` (default 300) and ``RAG_CHUNK_OVERLAP`` (default 50): chunk size and overlap, in
  cl100k tokens.
- ``RAG_MAX_UPLOAD_BYTES`` (default 52428800, 50 MiB): a larger upload is refused with 413.
- ``RAG_SYNC_CHUNKS`` (default 64): a document of at most this many chunks is ingested within its
  request (answer ``{id, chunks}``); a larger one becomes a job (202 ``{job_id, status}``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RagSettings:
    database_url: str | None = None
    data_dir: str = ".gateway/plugins/rag"
    pg_shared_buffers: str = "512MB"
    embedding_model: str = "text-embedding-3-small"
    dimensions: int = 256
    batch: int = 64
    chunk_tokens: int = 300
    chunk_overlap: int = 50
    max_upload_bytes: int = 50 * 1024 * 1024
    sync_chunks: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RagSettings:
        env = os.environ if env is None else env
        base = cls()

        def number(name: str, default: int, low: int) -> int:
            raw = env.get(name) or ""
            try:
                value = int(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name} must be an integer, not {raw!r}") from None
            if value < low:
                raise ValueError(f"{name} must be at least {low}, not {value}")
            return value

        return cls(
            database_url=env.get("RAG_DATABASE_URL") or None,
            data_dir=env.get("PLUGIN_DATA_DIR") or base.data_dir,
            pg_shared_buffers=_size(env.get("RAG_PG_SHARED_BUFFERS") or base.pg_shared_buffers),
            embedding_model=env.get("RAG_EMBEDDING_MODEL") or base.embedding_model,
            dimensions=number("RAG_EMBEDDING_DIMENSIONS", base.dimensions, 1),
            batch=number("RAG_EMBEDDING_BATCH", base.batch, 1),
            chunk_tokens=number("RAG_CHUNK_TOKENS", base.chunk_tokens, 16),
            chunk_overlap=number("RAG_CHUNK_OVERLAP", base.chunk_overlap, 0),
            max_upload_bytes=number("RAG_MAX_UPLOAD_BYTES", base.max_upload_bytes, 1),
            sync_chunks=number("RAG_SYNC_CHUNKS", base.sync_chunks, 0),
        )


_SIZE = re.compile(r"^\d+\s*(kB|MB|GB|TB)$")


def _size(value: str) -> str:
    """A Postgres memory size (``512MB``, ``2GB``), checked here, not by a server that fails to start."""
    if not _SIZE.match(value.strip()):
        raise ValueError(f"RAG_PG_SHARED_BUFFERS must be a size like 512MB or 2GB, not {value!r}")
    return value.strip()
