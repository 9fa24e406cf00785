"""The RAG store: Postgres + pgvector through psycopg 3, one SQL code path for the embedded server and a
real one (``RAG_DATABASE_URL``).

Tables, every row keyed by tenant: ``rag_collections`` (created on first write), ``rag_documents`` and
``rag_chunks`` (a chunk carries a copy of its document's metadata, so a metadata filter is one index scan
of one table, and ``ON DELETE CASCADE`` from its document, so deleting a document deletes every chunk and
vector in the same statement). ``embedding vector(N)`` has an HNSW index (cosine); ``tsv`` is a generated
``tsvector`` (English) over the heading path and the text, with a GIN index.

Search modes (``search``):

- ``vector``: the nearest chunks by cosine distance (HNSW). ``score`` is the cosine similarity
  ``1 - (embedding <=> query)`` in [-1, 1].
- ``keyword``: full-text candidates (any query word, Postgres's English stemming), ranked by
  ``ts_rank``. ``score`` is that rank normalised to [0, 1) (``rank / (rank + 1)``).
- ``hybrid`` (default): the vector candidates and the keyword candidates, each the best
  ``candidates`` of their kind, fused by reciprocal rank (RRF, ``k = 60``: ``1/(60 + rank_v) +
  1/(60 + rank_k)``), all in ONE query. The fused rank orders the results; ``score`` is the chunk's
  cosine similarity to the query (as in ``vector`` mode), so one number means the same in both modes.

``min_score`` drops results whose ``score`` is below it (inside the query). Tenant, collection and the
metadata filter (``metadata @> filter``, jsonb containment) are in the WHERE clause of each candidate
scan, never applied after it; the HNSW scan is iterative (pgvector 0.8 ``hnsw.iterative_scan``), so a
selective filter still yields ``candidates`` rows instead of whatever the first graph walk found.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Mode = Literal["hybrid", "vector", "keyword"]
MODES: tuple[Mode, ...] = ("hybrid", "vector", "keyword")
RRF_K = 60
MIN_CANDIDATES = 40
"""Each candidate list is at least this long (and at least 4 × top_k): fusion needs depth to matter."""
DEFAULT_EF_SEARCH = 40
"""pgvector's ``hnsw.ef_search`` default: wider candidate lists set it for their transaction only."""


class StoreError(Exception):
    """The store cannot do what was asked (a schema of another vector size, an unreachable server)."""


@dataclass(frozen=True, slots=True)
class ChunkIn:
    """A chunk to store: its ordinal in the document, text, heading path, and token count."""

    ordinal: int
    text: str
    heading: str = ""
    tokens: int = 0
    page: int | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    doc_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, Any]
    title: str | None = None
    heading: str = ""
    fused: float = 0.0
    """The RRF score that ordered a hybrid result (0 in the other modes)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "doc_id": self.doc_id,
            "chunk_id": self.chunk_id,
            "text": self.text,
            "score": round(self.score, 6),
            "metadata": self.metadata,
        }
        if self.title:
            out["title"] = self.title
        if self.heading:
            out["heading"] = self.heading
        return out


@dataclass(slots=True)
class Document:
    doc_id: str
    title: str | None
    format: str
    metadata: dict[str, Any]
    chunks: int
    content_hash: str
    created_at: str
    updated_at: str
    texts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.doc_id,
            "title": self.title,
            "format": self.format,
            "metadata": self.metadata,
            "chunks": self.chunks,
            "content_hash": self.content_hash,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if self.texts:
            out["chunk_list"] = self.texts
        return out


def chunk_id(doc_id: str, ordinal: int) -> str:
    """The citation id of a chunk: stable for the same text (its ordinal in the same chunking)."""
    return f"{doc_id}#{ordinal}"


def _schema(dims: int) -> list[str]:
    return [
        "CREATE EXTENSION IF NOT EXISTS vector",
        """CREATE TABLE IF NOT EXISTS rag_collections (
            tenant text NOT NULL, name text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant, name))""",
        """CREATE TABLE IF NOT EXISTS rag_documents (
            tenant text NOT NULL, collection text NOT NULL, doc_id text NOT NULL,
            title text, format text NOT NULL, metadata jsonb NOT NULL DEFAULT '{}',
            content_hash text NOT NULL, chunks integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant, collection, doc_id),
            FOREIGN KEY (tenant, collection) REFERENCES rag_collections ON DELETE CASCADE)""",
        f"""CREATE TABLE IF NOT EXISTS rag_chunks (
            id bigserial PRIMARY KEY,
            tenant text NOT NULL, collection text NOT NULL, doc_id text NOT NULL, ordinal integer NOT NULL,
            heading text NOT NULL DEFAULT '', text text NOT NULL, tokens integer NOT NULL DEFAULT 0,
            page integer, metadata jsonb NOT NULL DEFAULT '{{}}',
            embedding vector({dims}) NOT NULL,
            tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', heading || ' ' || text)) STORED,
            UNIQUE (tenant, collection, doc_id, ordinal),
            FOREIGN KEY (tenant, collection, doc_id) REFERENCES rag_documents ON DELETE CASCADE)""",
        "CREATE INDEX IF NOT EXISTS rag_chunks_embedding ON rag_chunks "
        "USING hnsw (embedding vector_cosine_ops)",
        "CREATE INDEX IF NOT EXISTS rag_chunks_tsv ON rag_chunks USING gin (tsv)",
        "CREATE INDEX IF NOT EXISTS rag_chunks_metadata ON rag_chunks USING gin (metadata jsonb_path_ops)",
    ]


def vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(v)) for v in vector) + "]"


# Candidates: each scan filters by tenant, collection and metadata in its own WHERE clause.
_VECTOR_CANDIDATES = """
    SELECT id, row_number() OVER (ORDER BY embedding <=> %(q)s::vector) AS rank
    FROM (SELECT id, embedding FROM rag_chunks
          WHERE tenant = %(tenant)s AND collection = %(collection)s AND metadata @> %(filter)s
          ORDER BY embedding <=> %(q)s::vector LIMIT %(candidates)s) v
"""
# Any query word (OR), not all of them: a question's words are rarely all in the chunk that answers it.
# ts_rank, not ts_rank_cd: every chunk holding any query word is ranked, and cover density costs ~3x
# more per chunk (100k chunks: 8 ms against 3 ms a query) while ranking worse on the evaluation set
# (keyword-only recall@5 0.893 -> 0.964, MRR@10 0.667 -> 0.830; python -m plugins.rag.eval).
#
# Ranking every chunk with any query word is the keyword side's cost (a heap visit and a ts_rank each:
# ~1,000 chunks a query at 100k). Most of them hold ONE query word, and with the tsvector's single weight
# ts_rank puts every chunk holding two distinct query words above every chunk holding one: a matched
# word adds between w/1.645 and w to the rank's sum (w: the weight, 1.645 = pi^2/6 bounds its repeats),
# so two words give at least 1.216 w against less than w. So the chunks holding two query words
# (``pairs``: an OR of every pair, answered by the GIN index) are ranked first; when they are at least
# ``candidates``, they ARE the top ``candidates`` of the whole OR set, in the same order, and the OR set
# is never read. Only when they are fewer is every chunk with any word ranked, as before.
# Any query word: plainto_tsquery's AND made an OR (ts_rank counts each distinct word once either way).
_ANYQ = "replace(plainto_tsquery('english', %(text)s)::text, ' & ', ' | ')::tsquery"
_KEYWORD_CANDIDATES = f"""
    SELECT id, row_number() OVER (ORDER BY r DESC, id) AS rank, r
    FROM (SELECT id, ts_rank(tsv, {_ANYQ}) AS r FROM rag_chunks
          WHERE tenant = %(tenant)s AND collection = %(collection)s AND metadata @> %(filter)s
            AND tsv @@ {_ANYQ}
          ORDER BY r DESC, id LIMIT %(candidates)s) k
"""
_PAIRED_CANDIDATES = f"""
    SELECT id, row_number() OVER (ORDER BY r DESC, id) AS rank, r FROM (
        (SELECT id, r FROM strict WHERE (SELECT count(*) FROM strict) >= %(candidates)s)
        UNION ALL
        (SELECT id, ts_rank(tsv, {_ANYQ}) AS r FROM rag_chunks
         WHERE tenant = %(tenant)s AND collection = %(collection)s AND metadata @> %(filter)s
           AND tsv @@ {_ANYQ} AND (SELECT count(*) FROM strict) < %(candidates)s
         ORDER BY r DESC, id LIMIT %(candidates)s)) k
"""
_STRICT = f"""strict AS MATERIALIZED (
        SELECT id, ts_rank(tsv, {_ANYQ}) AS r FROM rag_chunks
        WHERE tenant = %(tenant)s AND collection = %(collection)s AND metadata @> %(filter)s
          AND tsv @@ %(pairs)s::tsquery
        ORDER BY r DESC, id LIMIT %(candidates)s)"""
MAX_PAIRED_WORDS = 12
"""Above this many distinct query words (66 pairs), the keyword side ranks the whole OR set directly."""
PAIRED_FROM_CHUNKS = 20_000
"""The pairs are looked for only in a collection of at least this many chunks. The planner underestimates
how many chunks hold a pair (it multiplies the words' frequencies), so it does not intersect the pairs
with the tenant's rows: in a small collection of a large table, the pairs cost more than ranking the
collection's few OR matches (a 1,000-chunk tenant beside 100k chunks: keyword 1 ms -> 2 ms). Results are
the same either way; only the time differs."""
SIZE_TTL_S = 60.0
"""How long a collection's chunk count (capped at ``PAIRED_FROM_CHUNKS``) is reused for that choice."""


def pairs_query(tsquery: str) -> str | None:
    """Every pair of the distinct operands of ``plainto_tsquery``'s text (``'a' & 'b' & ...``, each lexeme
    quoted by Postgres) as an OR of ANDs; None for fewer than 2 or more than ``MAX_PAIRED_WORDS``."""
    words = list(dict.fromkeys(w for w in tsquery.split(" & ") if w))
    if not 2 <= len(words) <= MAX_PAIRED_WORDS:
        return None
    return " | ".join(f"({a} & {b})" for i, a in enumerate(words) for b in words[i + 1 :])


_RESULT_COLUMNS = """c.doc_id, c.ordinal, c.text, c.heading, c.metadata, d.title"""
_JOIN_DOCS = (
    "JOIN rag_documents d ON d.tenant = c.tenant AND d.collection = c.collection AND d.doc_id = c.doc_id"
)

_SEARCH: dict[Mode, str] = {  # the pairs tier off: the plainer statement plans faster
    "vector": f"""
        WITH vec AS ({_VECTOR_CANDIDATES})
        SELECT {_RESULT_COLUMNS}, 1 - (c.embedding <=> %(q)s::vector) AS score, 0.0::float8 AS fused
        FROM vec JOIN rag_chunks c ON c.id = vec.id {_JOIN_DOCS}
        WHERE 1 - (c.embedding <=> %(q)s::vector) >= %(min_score)s
        ORDER BY vec.rank LIMIT %(top_k)s""",
    "keyword": f"""
        WITH kw AS ({_KEYWORD_CANDIDATES})
        SELECT {_RESULT_COLUMNS}, (kw.r / (kw.r + 1))::float8 AS score, 0.0::float8 AS fused
        FROM kw JOIN rag_chunks c ON c.id = kw.id {_JOIN_DOCS}
        WHERE kw.r / (kw.r + 1) >= %(min_score)s
        ORDER BY kw.rank LIMIT %(top_k)s""",
    "hybrid": f"""
        WITH vec AS ({_VECTOR_CANDIDATES}), kw AS ({_KEYWORD_CANDIDATES}),
        fused AS (
            SELECT coalesce(vec.id, kw.id) AS id,
                   coalesce(1.0 / ({RRF_K} + vec.rank), 0) + coalesce(1.0 / ({RRF_K} + kw.rank), 0) AS rrf
            FROM vec FULL OUTER JOIN kw ON vec.id = kw.id)
        SELECT {_RESULT_COLUMNS}, 1 - (c.embedding <=> %(q)s::vector) AS score, fused.rrf::float8 AS fused
        FROM fused JOIN rag_chunks c ON c.id = fused.id {_JOIN_DOCS}
        WHERE 1 - (c.embedding <=> %(q)s::vector) >= %(min_score)s
        ORDER BY fused.rrf DESC, c.id LIMIT %(top_k)s""",
}


_PAIRED: dict[Mode, str] = {
    mode: _SEARCH[mode]
    .replace("WITH ", f"WITH {_STRICT}, ", 1)
    .replace(_KEYWORD_CANDIDATES, _PAIRED_CANDIDATES)
    for mode in ("keyword", "hybrid")
}


class Store:
    """A small pool of async connections to one database holding the RAG tables.

    ``await Store.open(url, dimensions)`` creates the schema when missing (a vector size other than the
    existing table's is a ``StoreError``: re-embedding is a migration, not a start-up side effect).
    """

    def __init__(self, url: str, dimensions: int, connections: list[psycopg.AsyncConnection[Any]]) -> None:
        self.url = url
        self.dimensions = dimensions
        self._idle: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        for conn in connections:
            self._idle.put_nowait(conn)
        self._all = connections
        self._sizes: dict[tuple[str, str], tuple[float, int]] = {}

    @classmethod
    async def open(cls, url: str, dimensions: int, *, pool_size: int = 4) -> Store:
        try:
            connections = [await _connect(url) for _ in range(pool_size)]
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to the RAG database: {exc}") from exc
        store = cls(url, dimensions, connections)
        async with store._conn() as conn:
            await conn.execute("SELECT pg_advisory_lock(hashtext('rag_schema'))")
            try:
                for statement in _schema(dimensions):
                    await conn.execute(statement)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext('rag_schema'))")
            row = await (
                await conn.execute(
                    "SELECT format_type(atttypid, atttypmod) AS t FROM pg_attribute "
                    "WHERE attrelid = 'rag_chunks'::regclass AND attname = 'embedding'"
                )
            ).fetchone()
        if row is None or row["t"] != f"vector({dimensions})":
            await store.close()
            found = row["t"] if row else "none"
            raise StoreError(
                f"rag_chunks.embedding is {found}, not vector({dimensions}): set RAG_EMBEDDING_DIMENSIONS "
                "to the stored size, or use a new database"
            )
        for conn in connections:
            await _session(conn)
        return store

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = await self._idle.get()
        try:
            yield conn
        finally:
            if conn.broken or conn.closed:
                conn = await _connect(self.url)
                await _session(conn)
                self._all = [c for c in self._all if not c.closed] + [conn]
            self._idle.put_nowait(conn)

    async def put_document(
        self,
        tenant: str,
        collection: str,
        doc_id: str,
        *,
        chunks: Sequence[ChunkIn],
        vectors: Sequence[Sequence[float]],
        title: str | None = None,
        format: str = "text",
        metadata: dict[str, Any] | None = None,
        content_hash: str = "",
    ) -> None:
        """Store (or replace, atomically: one transaction) a document and its chunks with their vectors."""
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        meta = Jsonb(metadata or {})
        async with self._conn() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO rag_collections (tenant, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (tenant, collection),
            )
            await conn.execute(
                "DELETE FROM rag_documents WHERE tenant = %s AND collection = %s AND doc_id = %s",
                (tenant, collection, doc_id),
            )
            await conn.execute(
                "INSERT INTO rag_documents (tenant, collection, doc_id, title, format, metadata, "
                "content_hash, chunks) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (tenant, collection, doc_id, title, format, meta, content_hash, len(chunks)),
            )
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO rag_chunks (tenant, collection, doc_id, ordinal, heading, text, tokens, "
                    "page, metadata, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::vector)",
                    [
                        (
                            tenant,
                            collection,
                            doc_id,
                            c.ordinal,
                            c.heading,
                            c.text,
                            c.tokens,
                            c.page,
                            meta,
                            vector_literal(v),
                        )
                        for c, v in zip(chunks, vectors, strict=True)
                    ],
                )

    async def list_documents(
        self, tenant: str, collection: str, *, limit: int = 100, after: str | None = None
    ) -> list[Document]:
        async with self._conn() as conn:
            cur = await conn.execute(
                f"SELECT {_DOC_COLUMNS} FROM rag_documents WHERE tenant = %s AND collection = %s "
                "AND doc_id > %s ORDER BY doc_id LIMIT %s",
                (tenant, collection, after or "", limit),
            )
            return [_document(row) for row in await cur.fetchall()]

    async def get_document(
        self, tenant: str, collection: str, doc_id: str, *, with_chunks: bool = False
    ) -> Document | None:
        async with self._conn() as conn:
            cur = await conn.execute(
                f"SELECT {_DOC_COLUMNS} FROM rag_documents "
                "WHERE tenant = %s AND collection = %s AND doc_id = %s",
                (tenant, collection, doc_id),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            doc = _document(row)
            if with_chunks:
                cur = await conn.execute(
                    "SELECT ordinal, heading, text, tokens, page FROM rag_chunks "
                    "WHERE tenant = %s AND collection = %s AND doc_id = %s ORDER BY ordinal",
                    (tenant, collection, doc_id),
                )
                doc.texts = [
                    {
                        "chunk_id": chunk_id(doc_id, r["ordinal"]),
                        "heading": r["heading"],
                        "text": r["text"],
                        "tokens": r["tokens"],
                        **({"page": r["page"]} if r["page"] is not None else {}),
                    }
                    for r in await cur.fetchall()
                ]
            return doc

    async def delete_document(self, tenant: str, collection: str, doc_id: str) -> bool:
        """Delete a document, its chunks and their vectors (one statement, by cascade); False if none."""
        async with self._conn() as conn:
            cur = await conn.execute(
                "DELETE FROM rag_documents WHERE tenant = %s AND collection = %s AND doc_id = %s",
                (tenant, collection, doc_id),
            )
            return cur.rowcount > 0

    async def count_chunks(
        self, tenant: str, collection: str | None = None, doc_id: str | None = None
    ) -> int:
        """Chunk rows (each with its vector) for a tenant, optionally one collection or document."""
        async with self._conn() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM rag_chunks WHERE tenant = %s "
                "AND (%s::text IS NULL OR collection = %s) AND (%s::text IS NULL OR doc_id = %s)",
                (tenant, collection, collection, doc_id, doc_id),
            )
            row = await cur.fetchone()
            return int(row["n"]) if row else 0

    async def search(
        self,
        tenant: str,
        collection: str,
        query_vector: Sequence[float] | None,
        query_text: str,
        top_k: int = 5,
        min_score: float | None = None,
        filter: dict[str, Any] | None = None,
        mode: Mode = "hybrid",
    ) -> list[Hit]:
        """The best ``top_k`` chunks for the query, as ``Hit`` (see the module docstring for ``score``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if mode != "keyword" and query_vector is None:
            raise ValueError(f"{mode} search needs a query vector")
        candidates = max(MIN_CANDIDATES, 4 * top_k)
        params = {
            "tenant": tenant,
            "collection": collection,
            "filter": Jsonb(filter or {}),
            "q": vector_literal(query_vector) if query_vector is not None else None,
            "text": query_text,
            "top_k": top_k,
            "candidates": candidates,
            "min_score": -2.0 if min_score is None else min_score,
        }
        async with self._conn() as conn:
            params["pairs"] = None
            if mode != "vector" and await self._size(conn, tenant, collection) >= PAIRED_FROM_CHUNKS:
                # the query's lexemes by Postgres's own parser and stemmer: one more round trip, paid
                # only where the pairs save more (a large collection)
                row = await (
                    await conn.execute("SELECT plainto_tsquery('english', %s)::text AS q", (query_text,))
                ).fetchone()
                params["pairs"] = pairs_query(row["q"] if row else "")
            statement = _SEARCH[mode] if params["pairs"] is None else _PAIRED[mode]
            if mode == "keyword" or candidates <= DEFAULT_EF_SEARCH:
                rows = await (await conn.execute(statement, params)).fetchall()
            else:  # the graph walk must be at least as wide as the candidate list
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL hnsw.ef_search = {candidates}")
                    rows = await (await conn.execute(statement, params)).fetchall()
        return [
            Hit(
                doc_id=r["doc_id"],
                chunk_id=chunk_id(r["doc_id"], r["ordinal"]),
                text=r["text"],
                score=float(r["score"]),
                metadata=r["metadata"],
                title=r["title"],
                heading=r["heading"],
                fused=float(r["fused"]),
            )
            for r in rows
        ]

    async def _size(self, conn: psycopg.AsyncConnection[Any], tenant: str, collection: str) -> int:
        """The collection's chunks, counted up to ``PAIRED_FROM_CHUNKS``, at most ``SIZE_TTL_S`` old."""
        now = time.monotonic()
        cached = self._sizes.get((tenant, collection))
        if cached is not None and now - cached[0] < SIZE_TTL_S:
            return cached[1]
        row = await (
            await conn.execute(
                "SELECT count(*) AS n FROM (SELECT 1 FROM rag_chunks WHERE tenant = %s AND collection = %s "
                "LIMIT %s) s",
                (tenant, collection, PAIRED_FROM_CHUNKS),
            )
        ).fetchone()
        size = int(row["n"]) if row else 0
        if len(self._sizes) > 10_000:  # many tenants: forget them all rather than grow without bound
            self._sizes.clear()
        self._sizes[(tenant, collection)] = (now, size)
        return size

    async def chunks(self, tenant: str, collection: str, chunk_ids: Sequence[str]) -> list[Hit]:
        """The chunks named by citation ids (``doc_id#n``) that exist in this tenant's collection."""
        pairs = [_split_chunk_id(c) for c in chunk_ids]
        wanted = [(d, n) for d, n in pairs if d is not None and n is not None]
        if not wanted:
            return []
        async with self._conn() as conn:
            cur = await conn.execute(
                f"SELECT {_RESULT_COLUMNS} FROM rag_chunks c {_JOIN_DOCS} "
                "WHERE c.tenant = %s AND c.collection = %s AND (c.doc_id, c.ordinal) IN "
                "(SELECT * FROM unnest(%s::text[], %s::int[]))",
                (tenant, collection, [d for d, _ in wanted], [n for _, n in wanted]),
            )
            rows = await cur.fetchall()
        return [
            Hit(
                r["doc_id"],
                chunk_id(r["doc_id"], r["ordinal"]),
                r["text"],
                0.0,
                r["metadata"],
                r["title"],
                r["heading"],
            )
            for r in rows
        ]


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    # prepare_threshold=None: never server-side prepared statements. psycopg prepares a query from its
    # 5th execution on, and Postgres's generic plan for the prepared search does not use the HNSW index
    # (measured, even with the LIMITs written into the SQL): a vector search at 10k chunks went from
    # 2.5 ms to 30 ms after five queries (plugins/rag/bench_search.py). A custom plan costs ~1 ms of
    # planning per search instead.
    return await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row, prepare_threshold=None
    )


async def _session(conn: psycopg.AsyncConnection[Any]) -> None:
    """Per-connection settings, the same on the embedded server and a ``RAG_DATABASE_URL`` one."""
    # iterative HNSW scans: filtered searches still fill their candidates
    await conn.execute("SET hnsw.iterative_scan = relaxed_order")
    # JIT compiles a query above jit_above_cost in several ms: a search is a few ms in all, and its cost
    # estimate (the whole collection's matches, before the LIMIT) can cross that line as it grows
    await conn.execute("SET jit = off")


_DOC_COLUMNS = (
    "doc_id, title, format, metadata, chunks, content_hash, "
    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at, "
    "to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS updated_at"
)
_CHUNK_ID = re.compile(r"^(.+)#(\d{1,9})$")


def _split_chunk_id(value: str) -> tuple[str | None, int | None]:
    match = _CHUNK_ID.match(value)
    return (match.group(1), int(match.group(2))) if match else (None, None)


def _document(row: dict[str, Any]) -> Document:
    return Document(
        doc_id=row["doc_id"],
        title=row["title"],
        format=row["format"],
        metadata=row["metadata"] if isinstance(row["metadata"], dict) else orjson.loads(row["metadata"]),
        chunks=row["chunks"],
        content_hash=row["content_hash"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
