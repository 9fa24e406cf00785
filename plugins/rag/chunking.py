"""Sections into chunks: windows of at most ``max_tokens`` cl100k tokens with ``overlap`` tokens shared by
neighbours, cut at paragraph ends where one falls in the window, never across a section (so a chunk has
one heading path, or one PDF page).

The same text with the same settings always gives the same chunks in the same order, so a chunk's
citation id ``doc_id#n`` (n its ordinal) is stable across re-ingestion; ``chunk_hash`` lets a caller see
that a chunk's text did not change.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from plugins.rag.parse import Section
from plugins.rag.store import ChunkIn
from plugins.rag.tokens import encoding

DEFAULT_MAX_TOKENS = 300
DEFAULT_OVERLAP = 50


@dataclass(frozen=True, slots=True)
class Settings:
    max_tokens: int = DEFAULT_MAX_TOKENS
    overlap: int = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        if self.max_tokens < 16 or not 0 <= self.overlap < self.max_tokens // 2:
            raise ValueError("chunking needs max_tokens >= 16 and 0 <= overlap < max_tokens / 2")


def chunk(sections: Sequence[Section], settings: Settings = Settings()) -> list[ChunkIn]:
    out: list[ChunkIn] = []
    for section in sections:
        for text, tokens in _windows(section.text, settings):
            out.append(ChunkIn(len(out), text, section.heading, tokens, section.page))
    return out


def _windows(text: str, settings: Settings) -> Iterator[tuple[str, int]]:
    enc = encoding()
    paragraphs = [p.strip() for p in text.split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    if not paragraphs:
        return
    tokens: list[int] = []
    ends: list[int] = []  # token offsets where a paragraph ends: the preferred cuts
    for p in paragraphs:
        if tokens:
            tokens.extend(enc.encode("\n\n"))
        tokens.extend(enc.encode(p, disallowed_special=()))
        ends.append(len(tokens))
    start, size, total = 0, settings.max_tokens, len(tokens)
    while start < total:
        limit = min(start + size, total)
        cut = limit
        if limit < total:
            # the last paragraph end inside the window, if it keeps the chunk at least half full
            i = bisect.bisect_right(ends, limit) - 1
            if i >= 0 and ends[i] - start >= size // 2:
                cut = ends[i]
        piece = enc.decode(tokens[start:cut]).strip()
        if piece:
            yield piece, cut - start
        if cut >= total:
            return
        start = max(cut - settings.overlap, start + 1)
