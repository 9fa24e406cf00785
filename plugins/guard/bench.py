"""Measure the injection screen on the labelled corpus: `python -m plugins.guard.bench [--errors]`.

Prints precision, recall, F1 and the false positives / false negatives per kind for the `dev` split (the
rules were tuned on it) and the `heldout` split (never looked at while tuning), then the screen's cost in
microseconds per text. The figures are reported, never asserted as timing in tests.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from plugins.guard.injection import Verdict, screen

CORPUS = Path(__file__).with_name("corpus") / "injection.jsonl"
LABELS = ("injection", "benign")
SPLITS = ("dev", "heldout")


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    label: str
    kind: str
    split: str


@dataclass(slots=True)
class Metrics:
    """Confusion counts with "injection" as the positive class, and the errors per kind."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    fp_by_kind: Counter[str] = field(default_factory=Counter)
    fn_by_kind: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[Sample, Verdict]] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def load_corpus(path: Path = CORPUS) -> list[Sample]:
    """Read and validate the JSONL corpus; a bad line raises ValueError naming its line number."""
    samples: list[Sample] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        text, label, kind, split = row.get("text"), row.get("label"), row.get("kind"), row.get("split")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path.name}:{number}: text must be a non-empty string")
        if label not in LABELS:
            raise ValueError(f"{path.name}:{number}: label must be one of {LABELS}")
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"{path.name}:{number}: kind must be a non-empty string")
        if split not in SPLITS:
            raise ValueError(f"{path.name}:{number}: split must be one of {SPLITS}")
        samples.append(Sample(text, label, kind, split))
    return samples


def evaluate(samples: Iterable[Sample], judge: Callable[[str], Verdict] = screen) -> Metrics:
    metrics = Metrics()
    for sample in samples:
        verdict = judge(sample.text)
        positive = sample.label == "injection"
        if verdict.flagged and positive:
            metrics.tp += 1
        elif verdict.flagged:
            metrics.fp += 1
            metrics.fp_by_kind[sample.kind] += 1
            metrics.errors.append((sample, verdict))
        elif positive:
            metrics.fn += 1
            metrics.fn_by_kind[sample.kind] += 1
            metrics.errors.append((sample, verdict))
        else:
            metrics.tn += 1
    return metrics


def microseconds_per_text(texts: Sequence[str], rounds: int = 20) -> float:
    """Best-of-rounds mean cost of one `screen` call over the corpus texts."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for text in texts:
            screen(text)
        best = min(best, time.perf_counter() - start)
    return best / len(texts) * 1e6


def report(name: str, metrics: Metrics) -> str:
    lines = [
        f"{name}: n={metrics.tp + metrics.fp + metrics.tn + metrics.fn}  precision={metrics.precision:.3f}  "
        f"recall={metrics.recall:.3f}  F1={metrics.f1:.3f}  (tp={metrics.tp} fp={metrics.fp} "
        f"tn={metrics.tn} fn={metrics.fn})"
    ]
    if metrics.fp_by_kind:
        lines.append("  false positives by kind: " + _kinds(metrics.fp_by_kind))
    if metrics.fn_by_kind:
        lines.append("  false negatives by kind: " + _kinds(metrics.fn_by_kind))
    return "\n".join(lines)


def _kinds(counts: Counter[str]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugins.guard.bench", description=__doc__)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--errors", choices=SPLITS, help="also list the misclassified texts of this split")
    parser.add_argument("--rounds", type=int, default=20, help="timing rounds (best is kept)")
    args = parser.parse_args(argv)

    samples = load_corpus(args.corpus)
    print(f"corpus: {args.corpus.name}, {len(samples)} texts ({_kinds(Counter(s.label for s in samples))})")
    for split in SPLITS:
        metrics = evaluate(s for s in samples if s.split == split)
        print(report(split, metrics))
        if args.errors == split:
            for sample, verdict in metrics.errors:
                print(
                    f"    [{sample.label}/{sample.kind} score={verdict.score} {','.join(verdict.rules)}] "
                    f"{sample.text[:160]!r}"
                )
    print(report("all", evaluate(samples)))
    print(
        f"screen: {microseconds_per_text([s.text for s in samples], args.rounds):.1f} µs per text "
        f"(mean over the corpus, best of {args.rounds} rounds)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
