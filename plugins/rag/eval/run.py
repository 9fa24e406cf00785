"""Run the evaluation: ingest the corpus into a store, then ask every question in each search mode.

The ingestion uses the plugin's own parser, chunker and store (``plugins.rag.parse``, ``.chunking``,
``.store``), and the embeddings come from a gateway's ``/v1/embeddings`` (``gateway.py``), so the figures
describe what the sidecar itself would retrieve.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from plugins.rag import chunking, parse
from plugins.rag.eval.dataset import ChunkText, Question, gold_chunks
from plugins.rag.eval.gateway import Embedder
from plugins.rag.eval.metrics import Summary, first_rank, rate, summarize
from plugins.rag.store import MODES, ChunkIn, Mode, Store, chunk_id

TENANT = "rag-eval"
COLLECTION = "handbook"
K = 5
DEPTH = 10
"""Results asked for per question: MRR is MRR@10."""
SWEEP = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)


def embedding_text(heading: str, text: str) -> str:
    """What a chunk is embedded as: its heading path, then its text (the heading says what it is about)."""
    return f"{heading}\n\n{text}" if heading else text


@dataclass(slots=True)
class Ingested:
    chunks: list[ChunkText]
    documents: int
    seconds: float


async def ingest(store: Store, embedder: Embedder, docs: Mapping[str, bytes]) -> Ingested:
    """Parse, chunk, embed (one batched call stream for the whole corpus) and store every document."""
    started = time.perf_counter()
    planned: list[tuple[str, parse.Parsed, list[ChunkIn]]] = []
    for doc_id, data in docs.items():
        parsed = parse.parse(data, "markdown")
        planned.append((doc_id, parsed, chunking.chunk(parsed.sections)))
    texts = [embedding_text(c.heading, c.text) for _, _, chunks in planned for c in chunks]
    vectors = await embedder.embed(texts)
    out: list[ChunkText] = []
    at = 0
    for doc_id, parsed, chunks in planned:
        await store.put_document(
            TENANT,
            COLLECTION,
            doc_id,
            chunks=chunks,
            vectors=vectors[at : at + len(chunks)],
            title=parsed.title,
            format="markdown",
            content_hash=hashlib.sha256(docs[doc_id]).hexdigest(),
        )
        at += len(chunks)
        out.extend(ChunkText(chunk_id(doc_id, c.ordinal), doc_id, c.text) for c in chunks)
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
    min_score: float,
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
        # exactly what the pre hook asks: the hybrid search with the route's min_score
        kept = await store.search(TENANT, COLLECTION, vector, q.question, top_k=k, min_score=min_score)
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
