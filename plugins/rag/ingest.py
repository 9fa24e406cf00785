"""Ingestion: parse, chunk, embed, store; a large document as a job whose progress can be polled.

Parsing and chunking run in a worker thread (a long PDF must not stall the event loop that serves the
hooks). Vectors are all made before anything is written, then the document is replaced in one
transaction: a reader sees the old version or the new one, never half of either, and a failed embedding
leaves the old version in place.

Jobs live in this process (``GET /api/jobs/{id}``, the tenant's own only) and are forgotten
``JOB_TTL_S`` after they end; a restart loses a running job (its document keeps its previous version).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from plugins.rag.chunking import Settings, chunk
from plugins.rag.embed import Embedder, EmbeddingError
from plugins.rag.parse import Format, Parsed, parse
from plugins.rag.store import ChunkIn, Store
from plugins.sdk import Delegation

JOB_TTL_S = 3600.0
Status = Literal["queued", "running", "succeeded", "failed"]


@dataclass(slots=True)
class Job:
    id: str
    tenant: str
    collection: str
    doc_id: str
    chunks_total: int
    status: Status = "queued"
    chunks_embedded: int = 0
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    ended_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "status": self.status,
            "collection": self.collection,
            "id": self.doc_id,
            "chunks_total": self.chunks_total,
            "chunks_embedded": self.chunks_embedded,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Prepared:
    """A document parsed and chunked, ready to embed."""

    doc_id: str
    parsed: Parsed
    chunks: list[ChunkIn]
    content_hash: str

    def embedding_inputs(self) -> list[str]:
        # The heading path goes with the text: "Install > Linux" is often what a question names.
        return [f"{c.heading}\n{c.text}" if c.heading else c.text for c in self.chunks]


def prepare(data: bytes | BinaryIO, fmt: Format, doc_id: str | None, settings: Settings) -> Prepared:
    """Blocking: parse and chunk. Without an id, the document's id is a hash of its bytes."""
    raw = data if isinstance(data, bytes) else data.read()
    digest = hashlib.sha256(raw).hexdigest()
    parsed = parse(raw, fmt)
    return Prepared(doc_id or "doc-" + digest[:16], parsed, chunk(parsed.sections, settings), digest)


class Ingestor:
    def __init__(self, store: Store, embedder: Embedder, sync_chunks: int) -> None:
        self.store = store
        self.embedder = embedder
        self.sync_chunks = sync_chunks
        self.jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def ingest(
        self,
        tenant: str,
        collection: str,
        doc: Prepared,
        metadata: dict[str, Any],
        delegation: Delegation | None,
    ) -> Job | None:
        """Store ``doc`` now (None) when it is small, else start a job and return it."""
        if len(doc.chunks) <= self.sync_chunks:
            await self._store(tenant, collection, doc, metadata, delegation, None)
            return None
        self._forget_old()
        job = Job(uuid.uuid4().hex, tenant, collection, doc.doc_id, len(doc.chunks))
        self.jobs[job.id] = job
        task = asyncio.create_task(self._run(job, doc, metadata, delegation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(
        self, job: Job, doc: Prepared, metadata: dict[str, Any], delegation: Delegation | None
    ) -> None:
        job.status = "running"

        def progress(done: int) -> None:
            job.chunks_embedded = done

        try:
            await self._store(job.tenant, job.collection, doc, metadata, delegation, progress)
            job.status = "succeeded"
        except EmbeddingError as exc:
            job.status, job.error = "failed", f"embedding failed: {exc}"
        except Exception as exc:  # the job's record is the only place its caller can see why
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.ended_at = time.time()

    async def _store(
        self,
        tenant: str,
        collection: str,
        doc: Prepared,
        metadata: dict[str, Any],
        delegation: Delegation | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        vectors = await self.embedder.embed(doc.embedding_inputs(), delegation, progress=progress)
        await self.store.put_document(
            tenant,
            collection,
            doc.doc_id,
            chunks=doc.chunks,
            vectors=vectors,
            title=doc.parsed.title,
            format=doc.parsed.format,
            metadata=metadata,
            content_hash=doc.content_hash,
        )

    def job(self, tenant: str, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.tenant == tenant else None

    def _forget_old(self) -> None:
        now = time.time()
        for key in [
            k for k, j in self.jobs.items() if j.ended_at is not None and now - j.ended_at > JOB_TTL_S
        ]:
            del self.jobs[key]
