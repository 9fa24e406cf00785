"""Run the evaluation: ingest the corpus into a store, then ask every question in each search mode.

The ingestion is the sidecar's own (``plugins.rag.ingest.prepare``: its parser, its chunker with the
default ``RAG_CHUNK_TOKENS``/``RAG_CHUNK_OVERLAP``, the same embedding inputs; ``Store.put_document``),
the embeddings come from a gateway's ``/v1/embeddings`` (``gateway.py``), and the refusal test is the pre
hook's search with the route defaults (``plugins.rag.hooks.Options``: hybrid, ``top_k`` 5, ``min_score``
0.3; nothing kept means ``on_no_context: answer_unknown``), so the figures describe what the sidecar
itself would retrieve and refuse.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from plugins.rag.chunking import Settings
from plugins.rag.eval.dataset import ChunkText, Question, gold_chunks
from plugins.rag.eval.gateway import Embedder
from plugins.rag.eval.metrics import Summary, first_rank, rate, summarize
from plugins.rag.hooks import Options
from plugins.rag.ingest import Prepared, prepare
from plugins.rag.settings import RagSettings
from plugins.rag.store import MODES, Mode, Store, chunk_id

TENANT = "rag-eval"
COLLECTION = "handbook"
ROUTE = Options(COLLECTION)
"""The rag route's defaults: what the pre hook asks when a route sets nothing but the collection."""
K = ROUTE.top_k
DEPTH = 10
"""Results asked for per question: MRR is MRR@10."""
SWEEP = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)


def default_chunking() -> Settings:
    defaults = RagSettings()
    return Settings(defaults.chunk_tokens, defaults.chunk_overlap)


@dataclass(slots=True)
class Ingested:
    chunks: list[ChunkText]
    documents: int
    seconds: float


def chunk_corpus(docs: Mapping[str, bytes], settings: Settings | None = None) -> list[Prepared]:
    """Every document parsed and chunked as the sidecar would (Markdown, its id the file stem)."""
    chunking = settings or default_chunking()
    return [prepare(data, "markdown", doc_id, chunking) for doc_id, data in docs.items()]


async def ingest(store: Store, embedder: Embedder, docs: Mapping[str, bytes]) -> Ingested:
    """Parse, chunk, embed (batched over the whole corpus) and store every document."""
    started = time.perf_counter()
    planned = chunk_corpus(docs)
    vectors = await embedder.embed([text for doc in planned for text in doc.embedding_inputs()])
    out: list[ChunkText] = []
    at = 0
    for doc in planned:
        await store.put_document(
            TENANT,
            COLLECTION,
            doc.doc_id,
            chunks=doc.chunks,
            vectors=vectors[at : at + len(doc.chunks)],
            title=doc.parsed.title,
            format="markdown",
            content_hash=doc.content_hash,
        )
        at += len(doc.chunks)
        out.extend(ChunkText(chunk_id(doc.doc_id, c.ordinal), doc.doc_id, c.text) for c in doc.chunks)
    return Ingested(out, len(planned), time.perf_counter() - started)


@dataclass(slots=True)
class Outcome:
    """One question's results: the ranked chunk ids per mode, and the best cosine similarity found."""

    question: Question
    gold: frozenset[str]
    ranked: dict[Mode, list[str]] = field(default_factory=dict)
    top_score: float = -1.0
    refused: bool = False
    """The hybrid search at the route's min_score returned nothing: the hook answers "not in the
    documents" (``on_no_context: answer_unknown``)."""


@dataclass(slots=True)
class Report:
    outcomes: list[Outcome]
    min_score: float
    summaries: dict[Mode, Summary]
    unknown_right: tuple[int, int]
    """(unanswerable questions refused, unanswerable questions)."""
    unknown_wrong: tuple[int, int]
    """(answerable questions refused, answerable questions)."""
    sweep: list[tuple[float, tuple[int, int], tuple[int, int]]]


async def evaluate(
    store: Store,
    embedder: Embedder,
    questions: Sequence[Question],
    chunks: Sequence[ChunkText],
    *,
    min_score: float = ROUTE.min_score,
    k: int = K,
) -> Report:
    gold = gold_chunks(questions, chunks)
    vectors = await embedder.embed([q.question for q in questions])
    outcomes: list[Outcome] = []
    for q, vector in zip(questions, vectors, strict=True):
        o = Outcome(q, gold[q.id])
        for mode in MODES:
            hits = await store.search(TENANT, COLLECTION, vector, q.question, top_k=DEPTH, mode=mode)
            o.ranked[mode] = [h.chunk_id for h in hits]
            if mode == "vector" and hits:
                o.top_score = hits[0].score
        # what the pre hook asks for a one-turn chat: the route's search, with its min_score
        kept = await store.search(
            TENANT, COLLECTION, vector, q.question, k, min_score, ROUTE.filter, ROUTE.mode
        )
        o.refused = not kept
        outcomes.append(o)
    answerable = [o for o in outcomes if o.question.answerable]
    unanswerable = [o for o in outcomes if not o.question.answerable]
    summaries = {m: summarize(((o.ranked[m], o.gold) for o in answerable), k) for m in MODES}
    # A hybrid search keeps a chunk only if its cosine similarity reaches min_score, and its candidates
    # include the nearest chunk by cosine: it comes back empty exactly when the best similarity is below.
    sweep = [
        (t, rate(o.top_score < t for o in unanswerable), rate(o.top_score < t for o in answerable))
        for t in SWEEP
    ]
    return Report(
        outcomes,
        min_score,
        summaries,
        rate(o.refused for o in unanswerable),
        rate(o.refused for o in answerable),
        sweep,
    )


def misses(report: Report, mode: Mode, k: int = K) -> list[tuple[Outcome, int | None]]:
    """The answerable questions whose gold chunk is not in ``mode``'s first ``k``, with its rank if any."""
    out = []
    for o in report.outcomes:
        if o.question.answerable:
            rank = first_rank(o.ranked[mode], o.gold)
            if rank is None or rank > k:
                out.append((o, rank))
    return out
