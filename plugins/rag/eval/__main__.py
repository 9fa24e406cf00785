"""``python -m plugins.rag.eval``: recall@5 and MRR@10 of hybrid, vector-only and keyword-only retrieval on
the shipped evaluation set, and how often ``on_no_context: answer_unknown`` fires (rightly on the
unanswerable questions, wrongly on the answerable ones) at the route's default ``min_score``.

A fresh embedded Postgres in a temporary directory (``--database-url`` for a server: the tables of the
tenant ``rag-eval`` are used) and a loopback gateway with the mock embeddings (``--gateway`` for another).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator, Sequence

from plugins.rag.eval import dataset
from plugins.rag.eval.gateway import MODEL, Embedder, loopback_gateway
from plugins.rag.eval.pg import throwaway
from plugins.rag.eval.run import COLLECTION, DEPTH, ROUTE, TENANT, K, Report, evaluate, ingest, misses
from plugins.rag.settings import RagSettings
from plugins.rag.store import MODES, Store


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m plugins.rag.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", help="a Postgres with pgvector (default: a fresh embedded one)")
    p.add_argument("--gateway", help="an OpenAI-compatible base URL ending in /v1 (default: a loopback one)")
    p.add_argument("--api-key", help="the key for --gateway")
    p.add_argument("--model", default=MODEL, help=f"the embedding model (default {MODEL})")
    p.add_argument("--dimensions", type=int, default=RagSettings().dimensions)
    p.add_argument("--min-score", type=float, default=ROUTE.min_score, help="the route's min_score")
    p.add_argument("--misses", action="store_true", help="list each mode's missed questions")
    args = p.parse_args(argv)
    if args.gateway and not args.api_key:
        p.error("--gateway needs --api-key")
    return asyncio.run(_run(args))


@contextlib.contextmanager
def _database(url: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with throwaway("rag-eval-pg-") as fresh:
            yield fresh


@contextlib.contextmanager
def _gateway(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    if args.gateway:
        yield args.gateway, args.api_key
    else:
        with loopback_gateway(args.model) as pair:
            yield pair


async def _run(args: argparse.Namespace) -> int:
    docs = dataset.documents()
    questions = dataset.load_questions()
    with _database(args.database_url) as url, _gateway(args) as (base_url, key):
        embedder = Embedder(base_url, key, args.model, args.dimensions)
        store = await Store.open(url, args.dimensions)
        try:
            await _clear(store)
            ingested = await ingest(store, embedder, docs)
            report = await evaluate(store, embedder, questions, ingested.chunks, min_score=args.min_score)
        finally:
            await store.close()
            await embedder.close()
    where = "embedded Postgres" if not args.database_url else "RAG_DATABASE_URL"
    source = f"gateway {args.gateway}" if args.gateway else "loopback gateway, mock provider"
    print(
        f"corpus: {ingested.documents} documents, {len(ingested.chunks)} chunks ({where}); "
        f"embeddings: {args.model}, {args.dimensions} dims ({source})"
    )
    print(format_report(report))
    if args.misses:
        for mode in MODES:
            print(f"\n{mode} misses (gold rank in the first {DEPTH}, or -):")
            for o, rank in misses(report, mode):
                print(f"  {o.question.id} [{rank or '-'}] {o.question.question}")
    return 0


async def _clear(store: Store) -> None:
    for doc in await store.list_documents(TENANT, COLLECTION, limit=10_000):
        await store.delete_document(TENANT, COLLECTION, doc.doc_id)


def _pct(pair: tuple[int, int]) -> str:
    n, total = pair
    return f"{n}/{total} ({100 * n / total:.0f} %)" if total else "-"


def format_report(report: Report) -> str:
    """The Markdown tables the README records."""
    n = next(iter(report.summaries.values())).questions
    lines = [
        f"| mode | recall@{K} | MRR@{DEPTH} |",
        "|---|---:|---:|",
        *(f"| {m} | {s.recall_at_k:.3f} | {s.mrr:.3f} |" for m, s in report.summaries.items()),
        "",
        f"{n} answerable questions, {report.unknown_right[1]} unanswerable. At min_score "
        f"{report.min_score:g} (hybrid search, as the pre hook asks): unanswerable → answer_unknown "
        f"{_pct(report.unknown_right)}; answerable wrongly refused {_pct(report.unknown_wrong)}.",
        "",
        "| min_score | unanswerable → answer_unknown | answerable refused |",
        "|---:|---:|---:|",
        *(f"| {t:g} | {_pct(right)} | {_pct(wrong)} |" for t, right, wrong in report.sweep),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
