"""The mock provider's embeddings: a deterministic hashed bag of words and character trigrams.

Each distinct lower-cased word adds a signed one-hot at ``crc32(stem) % dims`` and its character
trigrams (of ``<word>``, weight 0.5 spread over them) add theirs, so texts that share words are near,
texts sharing only word pieces ("index", "indexes") are somewhat near, and unrelated texts are nearly
orthogonal. The sign bit halves the bias that collisions add when ``dims`` is small. The vector is
L2-normalised, so a dot product is the cosine similarity.

Three habits of text retrieval make the vectors rank like a (weak) real model rather than a word count
(measured on the shipped evaluation set, ``python -m plugins.rag.eval``, at 256 dimensions: vector-only
recall@5 0.655 -> 0.821, MRR@10 0.493 -> 0.660, and the best similarity of an answerable question is
above that of an unanswerable one 79 % of the time instead of 59 %):

- function and question words ("the", "can", "my", "how", "many") weigh 0.1, so "How many ...?" does
  not make a question near every text that says "many";
- a word's slot is its stem (an -s, -ing or -ed ending removed), so "invoices" meets "invoice";
- a word repeated n times counts 1 + ln n, not n: a chunk that says "file" ten times is not ten times
  about files.

crc32, not ``hash()``: the same text must give the same vector in every process and replica (a
retrieval sidecar embeds its documents through one replica and its queries through another). A word's
features are cached, so a text costs a dictionary look-up per word once its vocabulary is warm: the
mock runs on the event loop.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from functools import lru_cache

import orjson

_WORD = re.compile(r"\w+")
_STOP_WORDS = (
    "a about after again all also am an and any are as at be been before being both but by can could "
    "did do does doing each few for from further get got had has have having he her here his how i if "
    "in into is it its just like make many may me might more most much must my need no nor not now of "
    "off on once one only or other our out over own same she should so some such than that the their "
    "them then there these they this those through to too under until up us very want was we were "
    "what when where which while who why will with would you your"
)
_STOP = frozenset(_STOP_WORDS.split())
_STOP_WEIGHT = 0.1
_GRAM_WEIGHT = 0.5
_SUFFIXES = ("ing", "ed", "s")


def embed(item: object, dims: int) -> list[float]:
    """The unit vector of ``item`` (a string, or token ids, which count as words)."""
    text = item if isinstance(item, str) else orjson.dumps(item).decode()
    vector = [0.0] * dims
    counts = Counter(_WORD.findall(text.lower()) or [""])
    for word, n in counts.items():
        tf = 1.0 + math.log(n)
        for index, value in _features(word, dims):
            vector[index] += tf * value
    norm = sum(v * v for v in vector) ** 0.5
    if not norm:  # every feature cancelled out: still a unit vector, as a provider's always is
        vector[0], norm = 1.0, 1.0
    return [v / norm for v in vector]


@lru_cache(maxsize=1 << 16)
def _features(word: str, dims: int) -> tuple[tuple[int, float], ...]:
    """The signed (index, value) pairs one occurrence of ``word`` adds."""
    weight = _STOP_WEIGHT if word in _STOP else 1.0
    out = [_slot("w:" + _stem(word), dims, weight)]
    padded = f"<{word}>"
    grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
    share = weight * _GRAM_WEIGHT / len(grams) ** 0.5 if grams else 0.0
    out.extend(_slot("g:" + gram, dims, share) for gram in grams)
    return tuple(out)


def _stem(word: str) -> str:
    """The word without one -s, -ing or -ed ending, then without a final e ("shares", "shared",
    "sharing" and "share" all give "shar"): a crude stemmer, which is all the mock needs."""
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 2 and word.endswith(suffix) and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


def _slot(feature: str, dims: int, weight: float) -> tuple[int, float]:
    h = zlib.crc32(feature.encode())
    return h % dims, -weight if h >> 31 else weight
