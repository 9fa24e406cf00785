"""The mock's embeddings rank like a (weak) retrieval model: inflections meet, question words and
repetition do not dominate (the measured effect is in gateway/providers/mock_embed.py's docstring)."""

from __future__ import annotations

from gateway.providers.mock_embed import embed


def cosine(a: str, b: str, dims: int = 256) -> float:
    return sum(x * y for x, y in zip(embed(a, dims), embed(b, dims), strict=True))


def test_a_plural_meets_its_singular() -> None:
    assert cosine("invoices", "invoice") > 0.6
    assert cosine("Where are my invoices?", "The invoice is emailed as PDF.") > 0.4


def test_question_words_do_not_make_a_match() -> None:
    question = "How many devices can I link?"
    answer = "Each person can link up to ten desktop computers and ten mobile devices."
    decoy = "Many teams can share folders with people outside."
    assert cosine(question, answer) > 2 * max(cosine(question, decoy), 0.05)
    assert cosine(question, decoy) < 0.15


def test_a_repeated_word_counts_less_than_its_repetitions() -> None:
    repeated = "file " * 8 + "backup"
    # eight times "file" would leave "backup" about 1/8 of the vector; 1 + ln 8 leaves it about 1/3
    assert cosine(repeated, "backup") > 0.25
