"""Search speed of the RAG store: ``python -m plugins.rag.bench_search`` (``make bench-rag``).

Fills a fresh embedded Postgres (or ``--database-url``) with deterministic synthetic chunks by COPY, builds
the store's own HNSW index, then times ``Store.search`` (the sidecar's query, one round trip through
psycopg) in each mode: p50/p95 over ``--queries`` queries after a warm-up, at each size of ``--sizes``.
Also: the HNSW build time, and ingestion through ``Store.put_document`` (the sidecar's path, index
maintained) in chunks per second with the vectors already computed, i.e. excluding embedding.

Synthetic data: ``TOPICS`` topics, each a random centroid and a set of made-up words; a chunk is 60 words
mostly from its topic and a vector near its topic's centroid, a query likewise, so vector and keyword
candidates overlap as they do on real text. A small second tenant (1 % of the rows) is searched too: the
tenant and collection filter is in the query, and a selective filter must not make the search slow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from plugins.rag.eval.pg import throwaway
from plugins.rag.settings import RagSettings
from plugins.rag.store import MODES, Mode, Store, _schema

SEED = 20261206
TOPICS = 200
WORDS_PER_TOPIC = 40
CHUNK_WORDS = 60
DOC_CHUNKS = 20
TENANT, COLLECTION = "bench", "docs"
SMALL_TENANT = "bench-small"
SMALL_SHARE = 0.01
_SYLLABLES = tuple(
    [
        "ka",
        "lo",
        "mi",
        "nu",
        "pe",
        "ra",
        "si",
        "to",
        "vu",
        "we",
        "xa",
        "yo",
        "za",
        "be",
        "ci",
        "do",
        "fu",
        "ga",
        "hi",
        "jo",
    ]
)


@dataclass(frozen=True, slots=True)
class Model:
    """The deterministic topic model the synthetic chunks and queries are drawn from."""

    dims: int
    centroids: list[list[float]]
    topic_words: list[list[str]]
    common: list[str]

    @classmethod
    def build(cls, dims: int, seed: int = SEED) -> Model:
        rng = random.Random(seed)
        vocab = sorted({"".join(rng.choices(_SYLLABLES, k=rng.randint(3, 4))) for _ in range(20_000)})
        rng.shuffle(vocab)
        centroids = [_unit([rng.gauss(0, 1) for _ in range(dims)]) for _ in range(TOPICS)]
        topic_words = [vocab[i * WORDS_PER_TOPIC : (i + 1) * WORDS_PER_TOPIC] for i in range(TOPICS)]
        return cls(dims, centroids, topic_words, vocab[TOPICS * WORDS_PER_TOPIC :])

    def text(self, rng: random.Random, topic: int, words: int) -> str:
        own = self.topic_words[topic]
        return " ".join(
            rng.choice(own) if rng.random() < 0.7 else rng.choice(self.common) for _ in range(words)
        )

    def vector(self, rng: random.Random, topic: int, noise: float = 0.08) -> list[float]:
        return _unit([c + rng.gauss(0, noise) for c in self.centroids[topic]])


def _unit(v: list[float]) -> list[float]:
    norm = sum(x * x for x in v) ** 0.5 or 1.0
    return [x / norm for x in v]


def _literal(v: Sequence[float]) -> str:
    return "[" + ",".join(f"{x:.5f}" for x in v) + "]"


async def fill(store: Store, model: Model, tenant: str, start: int, count: int, seed: int) -> float:
    """COPY ``count`` chunks (documents ``start//DOC_CHUNKS``...) into ``tenant``; seconds taken."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    async with store._conn() as conn:  # the bench drives the store's own connections
        await conn.execute(
            "INSERT INTO rag_collections (tenant, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (tenant, COLLECTION),
        )
        first_doc, last_doc = start // DOC_CHUNKS, (start + count - 1) // DOC_CHUNKS
        async with conn.cursor() as cur:
            async with cur.copy(
                "COPY rag_documents (tenant, collection, doc_id, title, format, content_hash, chunks) "
                "FROM STDIN"
            ) as copy:
                for d in range(first_doc, last_doc + 1):
                    await copy.write_row(
                        (tenant, COLLECTION, f"doc-{d}", f"Document {d}", "text", "", DOC_CHUNKS)
                    )
            async with cur.copy(
                "COPY rag_chunks (tenant, collection, doc_id, ordinal, heading, text, tokens, embedding) "
                "FROM STDIN"
            ) as copy:
                for i in range(start, start + count):
                    topic = rng.randrange(TOPICS)
                    row = (
                        tenant,
                        COLLECTION,
                        f"doc-{i // DOC_CHUNKS}",
                        i % DOC_CHUNKS,
                        f"Section {topic}",
                        model.text(rng, topic, CHUNK_WORDS),
                        CHUNK_WORDS,
                        _literal(model.vector(rng, topic)),
                    )
                    await copy.write_row(row)
    return time.perf_counter() - t0


async def rebuild_index(store: Store, drop_only: bool = False) -> float:
    """Drop, or rebuild, the HNSW index exactly as the store's schema defines it; seconds taken."""
    ddl = next(s for s in _schema(store.dimensions) if "USING hnsw" in s)
    t0 = time.perf_counter()
    async with store._conn() as conn:
        await conn.execute("DROP INDEX IF EXISTS rag_chunks_embedding")
        if not drop_only:
            await conn.execute("SET maintenance_work_mem = '512MB'")
            await conn.execute(ddl)
            await conn.execute("RESET maintenance_work_mem")
            # as autovacuum would soon after a bulk load: statistics, and the GIN index's pending list
            # merged (with entries pending, the planner prices the full-text index scan above a
            # sequential scan: 11 ms instead of 2 ms at 10k chunks)
            await conn.execute("VACUUM ANALYZE rag_chunks")
            await conn.execute("VACUUM ANALYZE rag_documents")
    return time.perf_counter() - t0


@dataclass(frozen=True, slots=True)
class Timing:
    p50_ms: float
    p95_ms: float
    results: float
    """Mean results per query (a query that found nothing would be fast for the wrong reason)."""


async def time_search(
    store: Store, model: Model, tenant: str, mode: Mode, queries: int, top_k: int = 5
) -> Timing:
    rng = random.Random(SEED + 1)
    asks = []
    for _ in range(queries):
        topic = rng.randrange(TOPICS)
        asks.append((model.text(rng, topic, 6), model.vector(rng, topic, noise=0.15)))
    for text, vector in asks[:10]:  # warm-up: caches and the plan
        await store.search(tenant, COLLECTION, vector, text, top_k=top_k, mode=mode)
    times: list[float] = []
    found = 0
    for text, vector in asks:
        t0 = time.perf_counter()
        hits = await store.search(tenant, COLLECTION, vector, text, top_k=top_k, mode=mode)
        times.append(time.perf_counter() - t0)
        found += len(hits)
    times.sort()
    return Timing(
        1000 * statistics.median(times), 1000 * times[int(0.95 * (len(times) - 1))], found / len(asks)
    )


@dataclass(frozen=True, slots=True)
class Ingestion:
    chunks: int
    prepare_s: float
    store_s: float

    @property
    def rate(self) -> float:
        """Chunks per second, parsing and chunking plus storing (the embedding call excluded)."""
        return self.chunks / (self.prepare_s + self.store_s)


async def time_ingest(store: Store, model: Model, copies: int) -> Ingestion:
    """The evaluation corpus ingested ``copies`` times as the sidecar does it (``ingest.prepare``: parse
    and chunk; ``Store.put_document``: one transaction a document, the indexes maintained), with
    vectors drawn from the topic model instead of an embeddings call."""
    from plugins.rag.eval.dataset import documents
    from plugins.rag.eval.run import chunk_corpus
    from plugins.rag.tokens import encoding

    rng = random.Random(SEED + 2)
    docs = documents()
    encoding()  # built once per process at the sidecar's start-up: not ingestion
    t0 = time.perf_counter()
    prepared = [d for _ in range(copies) for d in chunk_corpus(docs)]
    prepare_s = time.perf_counter() - t0
    vectors = [[model.vector(rng, rng.randrange(TOPICS)) for _ in d.chunks] for d in prepared]
    t0 = time.perf_counter()
    for n, (doc, vecs) in enumerate(zip(prepared, vectors, strict=True)):
        await store.put_document(
            "bench-ingest",
            COLLECTION,
            f"{doc.doc_id}-{n}",
            chunks=doc.chunks,
            vectors=vecs,
            format="markdown",
        )
    store_s = time.perf_counter() - t0
    async with store._conn() as conn:  # leave the measured tables as they were
        await conn.execute("DELETE FROM rag_collections WHERE tenant = 'bench-ingest'")
    return Ingestion(sum(len(d.chunks) for d in prepared), prepare_s, store_s)


@contextlib.contextmanager
def _database(url: str | None, shared_buffers: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with throwaway("rag-bench-pg-", shared_buffers=shared_buffers) as fresh:
            yield fresh


def _say(line: str) -> None:
    print(line, flush=True)


async def run(args: argparse.Namespace) -> None:
    model = Model.build(args.dimensions)
    small = f"{SMALL_SHARE:.0%} of the rows, in a second tenant"
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    _say(f"dimensions {args.dimensions}, top_k 5, {args.queries} queries a row (after 10 of warm-up)")
    _say(f"{os.cpu_count()} CPUs, load average {load} at the start (other work on the machine slows it)")
    _say("")
    _say("| chunks in the table | searched | mode | p50 ms | p95 ms | results/query |")
    _say("|---:|---|---|---:|---:|---:|")
    notes: list[str] = []
    with _database(args.database_url, args.shared_buffers) as url:
        store = await Store.open(url, args.dimensions)
        try:
            async with store._conn() as conn:
                await conn.execute("DELETE FROM rag_collections WHERE tenant LIKE 'bench%'")
                row = await (await conn.execute("SHOW shared_buffers")).fetchone()
            notes.append(f"- Postgres shared_buffers: {row['shared_buffers'] if row else '?'}")
            have = 0
            for size in sorted(args.sizes):
                await rebuild_index(store, drop_only=True)
                copy_s = await fill(store, model, TENANT, have, size - have, SEED + size)
                extra = int(size * SMALL_SHARE) - int(have * SMALL_SHARE)
                await fill(store, model, SMALL_TENANT, int(have * SMALL_SHARE), extra, SEED - size)
                build_s = await rebuild_index(store)
                notes.append(
                    f"- {size:,} chunks: COPY {(size - have) / copy_s:,.0f} chunks/s (generation included), "
                    f"HNSW build {build_s:.1f} s"
                )
                have = size
                total = size + int(size * SMALL_SHARE)
                for tenant, what in ((TENANT, "one collection, all but 1 %"), (SMALL_TENANT, small)):
                    for mode in MODES:
                        t = await time_search(store, model, tenant, mode, args.queries)
                        _say(
                            f"| {total:,} | {what} | {mode} | {t.p50_ms:.2f} | {t.p95_ms:.2f} "
                            f"| {t.results:.1f} |"
                        )
                if args.ingest:
                    i = await time_ingest(store, model, args.ingest)
                    notes.append(
                        f"- ingestion beside {total:,} chunks, embedding excluded: {i.rate:,.0f} chunks/s "
                        f"({i.chunks:,} chunks of the evaluation corpus; parse and chunk "
                        f"{i.chunks / i.prepare_s:,.0f} chunks/s, Store.put_document "
                        f"{i.chunks / i.store_s:,.0f} chunks/s with HNSW and GIN maintained)"
                    )
        finally:
            await store.close()
    notes.append("- load average at the end: " + "/".join(f"{x:.1f}" for x in os.getloadavg()))
    _say("")
    for line in notes:
        _say(line)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m plugins.rag.bench_search", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 100_000])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--dimensions", type=int, default=RagSettings().dimensions)
    p.add_argument(
        "--ingest",
        type=int,
        default=3,
        help="copies of the evaluation corpus ingested at each size (0: none)",
    )
    p.add_argument("--database-url", help="a Postgres with pgvector (default: a fresh embedded one)")
    p.add_argument(
        "--shared-buffers",
        help="the embedded server's shared_buffers, e.g. 1GB (default: the sidecar's, 512MB)",
    )
    args = p.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
