"""The shipped evaluation set: the corpus (``corpus/*.md``, one document per file, its id the file's stem)
and ``questions.jsonl``.

A question names its answer as ``{"doc": <document id>, "phrase": <words of the answer>}`` rather than as
chunk ids, so the labels survive a change of chunk size or overlap: at evaluation time every chunk of that
document whose text contains the phrase (case and runs of white space ignored) is a gold chunk. A phrase
that no chunk contains (a typo, or a phrase cut in two by a chunk boundary) is an error, never a silent
miss. ``unanswerable: true`` questions have no answers: the corpus does not say.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
QUESTIONS = HERE / "questions.jsonl"


@dataclass(frozen=True, slots=True)
class Answer:
    doc: str
    phrase: str


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    question: str
    answers: tuple[Answer, ...]

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


@dataclass(frozen=True, slots=True)
class ChunkText:
    """What the evaluation needs of a stored chunk: its citation id, document and text."""

    chunk_id: str
    doc_id: str
    text: str


def documents(folder: Path = CORPUS) -> dict[str, bytes]:
    """Document id (file stem) -> Markdown bytes, in name order."""
    return {p.stem: p.read_bytes() for p in sorted(folder.glob("*.md"))}


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    """Read and check ``questions.jsonl``; a bad line raises ValueError naming its line number."""
    out: list[Question] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            qid, text = str(raw["id"]), str(raw["question"])
            answers = tuple(Answer(str(a["doc"]), str(a["phrase"])) for a in raw.get("answers") or ())
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path.name}:{n}: {exc}") from exc
        if qid in seen:
            raise ValueError(f"{path.name}:{n}: duplicate id {qid!r}")
        if bool(raw.get("unanswerable")) == bool(answers):
            raise ValueError(f"{path.name}:{n}: a question has answers or is unanswerable: exactly one")
        seen.add(qid)
        out.append(Question(qid, text, answers))
    return out


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def gold_chunks(questions: Sequence[Question], chunks: Iterable[ChunkText]) -> dict[str, frozenset[str]]:
    """Question id -> the ids of the chunks holding one of its answer phrases (empty: unanswerable).

    Raises ValueError listing every answer no chunk contains.
    """
    by_doc: dict[str, list[tuple[str, str]]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append((c.chunk_id, _norm(c.text)))
    gold: dict[str, frozenset[str]] = {}
    missing: list[str] = []
    for q in questions:
        ids: set[str] = set()
        for a in q.answers:
            phrase = _norm(a.phrase)
            found = {cid for cid, text in by_doc.get(a.doc, ()) if phrase in text}
            if not found:
                missing.append(f"{q.id}: {a.doc!r} has no chunk containing {a.phrase!r}")
            ids |= found
        gold[q.id] = frozenset(ids)
    if missing:
        raise ValueError("answers not found in any chunk:\n  " + "\n  ".join(missing))
    return gold


def subset(questions: Sequence[Question], ids: Mapping[str, object] | Iterable[str]) -> list[Question]:
    wanted = set(ids)
    return [q for q in questions if q.id in wanted]
