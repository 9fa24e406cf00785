"""Retrieval metrics over ranked chunk ids, pure functions so a test can check them by hand.

A question's gold answer is a set of chunk ids, any one of which answers it (overlapping chunks often
both hold the answer phrase, and some facts are stated in two documents). So:

- ``hit_at(ranked, gold, k)``: 1 when a gold chunk is among the first ``k`` results, else 0; its mean over
  the answerable questions is the "recall@k" reported (with one answer per question, recall@k and the
  hit rate are the same number);
- ``reciprocal_rank(ranked, gold)``: 1 / the 1-based rank of the first gold chunk, 0 when none was
  returned; its mean is the MRR (over as many results as were asked for: MRR@10 in the bench).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass


def first_rank(ranked: Sequence[str], gold: Collection[str]) -> int | None:
    """The 1-based rank of the first gold chunk in ``ranked``, None when none is there."""
    for i, chunk in enumerate(ranked, 1):
        if chunk in gold:
            return i
    return None


def hit_at(ranked: Sequence[str], gold: Collection[str], k: int) -> float:
    rank = first_rank(ranked, gold)
    return 1.0 if rank is not None and rank <= k else 0.0


def reciprocal_rank(ranked: Sequence[str], gold: Collection[str]) -> float:
    rank = first_rank(ranked, gold)
    return 1.0 / rank if rank is not None else 0.0


@dataclass(frozen=True, slots=True)
class Summary:
    """One search mode's figures over a question set."""

    questions: int
    recall_at_k: float
    mrr: float


def summarize(runs: Iterable[tuple[Sequence[str], Collection[str]]], k: int = 5) -> Summary:
    """Mean hit@k and reciprocal rank over (ranked ids, gold ids) pairs; gold must not be empty."""
    n = 0
    hits = rr = 0.0
    for ranked, gold in runs:
        if not gold:
            raise ValueError("an answerable question needs at least one gold chunk")
        n += 1
        hits += hit_at(ranked, gold, k)
        rr += reciprocal_rank(ranked, gold)
    if not n:
        return Summary(0, 0.0, 0.0)
    return Summary(n, hits / n, rr / n)


def rate(flags: Iterable[bool]) -> tuple[int, int]:
    """(how many were true, how many there were)."""
    true = total = 0
    for flag in flags:
        total += 1
        true += bool(flag)
    return true, total
