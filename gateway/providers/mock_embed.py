"""The mock provider's embeddings: a deterministic hashed bag of words and character trigrams.

Each lower-cased word token adds a signed one-hot at ``crc32(word) % dims`` (weight 1) and its
character trigrams (of ``<word>``, weight 0.5 spread over them) add theirs, so texts that share words
are near, texts sharing only word pieces ("index", "indexes") are somewhat near, and unrelated texts
are nearly orthogonal. Very common English words weigh little, so "the" does not make two texts
alike. The sign bit halves the bias that collisions add when ``dims`` is small. The vector is
L2-normalised, so a dot product is the cosine similarity.

crc32, not ``hash()``: the same text must give the same vector in every process and replica (a
retrieval sidecar embeds its documents through one replica and its queries through another). A word's
features are cached, so a text costs a dictionary look-up per word once its vocabulary is warm: the
mock runs on the event loop.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

import orjson

_WORD = re.compile(r"\w+")
_STOP_WORDS = (
    "a an and are as at be but by do does for from has have how i if in is it its of on or that the "
    "this to was were what when where which who why will with you your"
)
_STOP = frozenset(_STOP_WORDS.split())
_STOP_WEIGHT = 0.1
_GRAM_WEIGHT = 0.5


def embed(item: object, dims: int) -> list[float]:
    """The unit vector of ``item`` (a string, or token ids, which count as words)."""
    text = item if isinstance(item, str) else orjson.dumps(item).decode()
    vector = [0.0] * dims
    words = _WORD.findall(text.lower()) or [""]
    for word in words:
        for index, value in _features(word, dims):
            vector[index] += value
    norm = sum(v * v for v in vector) ** 0.5
    if not norm:  # every feature cancelled out: still a unit vector, as a provider's always is
        vector[0], norm = 1.0, 1.0
    return [v / norm for v in vector]


@lru_cache(maxsize=1 << 16)
def _features(word: str, dims: int) -> tuple[tuple[int, float], ...]:
    """The signed (index, value) pairs one occurrence of ``word`` adds."""
    weight = _STOP_WEIGHT if word in _STOP else 1.0
    out = [_slot("w:" + word, dims, weight)]
    padded = f"<{word}>"
    grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
    share = weight * _GRAM_WEIGHT / len(grams) ** 0.5 if grams else 0.0
    out.extend(_slot("g:" + gram, dims, share) for gram in grams)
    return tuple(out)


def _slot(feature: str, dims: int, weight: float) -> tuple[int, float]:
    h = zlib.crc32(feature.encode())
    return h % dims, -weight if h >> 31 else weight
