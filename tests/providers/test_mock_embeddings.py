"""The mock's embeddings mean something: texts sharing words are near, unrelated texts far (issue 18)."""

from __future__ import annotations

import base64
import math
import struct

import pytest

from gateway.errors import UpstreamStatusError
from gateway.providers.mock import MAX_DIMENSIONS, embeddings


def vectors(inputs: list[str], dims: int | None = 256) -> list[list[float]]:
    body: dict[str, object] = {"model": "m", "input": inputs, "encoding_format": "float"}
    if dims is not None:
        body["dimensions"] = dims
    answer, _ = embeddings(body)
    return [d["embedding"] for d in answer["data"]]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


QUERY = "How do I reset my password?"
NEAR = "To reset your password, open Settings and choose Reset password."
FAR = "Quarterly revenue grew strongly in the European market last year."


@pytest.mark.parametrize("dims", [16, 64, 256, 1536])
def test_texts_sharing_words_are_nearer_than_unrelated_ones(dims: int) -> None:
    query, near, far = vectors([QUERY, NEAR, FAR], dims)
    assert cosine(query, near) > cosine(query, far)


def test_at_a_retrieval_size_unrelated_texts_are_nearly_orthogonal() -> None:
    query, near, far = vectors([QUERY, NEAR, FAR], 256)
    assert cosine(query, near) > 0.4
    assert abs(cosine(query, far)) < 0.2


def test_word_pieces_count_a_little() -> None:
    base, inflected, other = vectors(["indexing", "indexes", "salmon"], 256)
    assert cosine(base, inflected) > 0.1 > abs(cosine(base, other))


def test_common_words_alone_do_not_make_texts_alike() -> None:
    a, b = vectors(["the cat is on the mat", "the stock is in the index"], 256)
    assert cosine(a, b) < 0.2


def test_vectors_are_deterministic_unit_and_case_insensitive() -> None:
    first, second, upper = vectors([NEAR, NEAR, NEAR.upper()])
    assert first == second
    assert math.isclose(sum(v * v for v in first), 1.0, rel_tol=1e-9)
    assert upper == pytest.approx(first)


def test_default_size_empty_text_and_token_arrays() -> None:
    answer, usage = embeddings({"model": "m", "input": ["", [1, 2, 3]]})
    data = [d["embedding"] for d in answer["data"]]
    assert [len(v) for v in data] == [16, 16]
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-9) for v in data)
    assert usage.prompt_tokens >= 3


def test_base64_is_the_same_vector_packed() -> None:
    floats = vectors([QUERY], 32)[0]
    answer, _ = embeddings({"model": "m", "input": QUERY, "dimensions": 32, "encoding_format": "base64"})
    packed = base64.b64decode(answer["data"][0]["embedding"])
    assert list(struct.unpack("<32f", packed)) == pytest.approx(floats, abs=1e-6)


@pytest.mark.parametrize("dims", [0, MAX_DIMENSIONS + 1, "8", True])
def test_impossible_sizes_are_a_400(dims: object) -> None:
    with pytest.raises(UpstreamStatusError) as caught:
        embeddings({"model": "m", "input": "x", "dimensions": dims})
    assert caught.value.status == 400
