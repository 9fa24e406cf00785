"""Parsing (text, Markdown, HTML, PDF) into sections with heading paths, and token chunking with overlap
that is stable for the same text."""

from __future__ import annotations

import itertools

import pytest
from rag_helpers import make_pdf

from plugins.rag.chunking import Settings, chunk
from plugins.rag.ingest import prepare
from plugins.rag.parse import ParseError, detect, parse
from plugins.rag.tokens import encoding

MD = b"""# Guide

Intro.

## Install

Run the installer.

```
# a comment in code, not a heading
```

### Linux

Use the package.

## Use

Start it.
"""


def test_markdown_sections_carry_their_heading_path_and_code_is_not_a_heading() -> None:
    parsed = parse(MD, "markdown")
    assert parsed.title == "Guide"
    assert [s.heading for s in parsed.sections] == [
        "Guide",
        "Guide > Install",
        "Guide > Install > Linux",
        "Guide > Use",
    ]
    assert "# a comment in code" in parsed.sections[1].text


def test_html_headings_paragraphs_and_dropped_parts() -> None:
    html = b"""<html><head><title>Page</title><script>var x = "secret";</script></head><body>
    <nav>Home | About</nav><h1>Top</h1><p>One <b>two</b>.</p><ul><li><p>Item</p></li></ul>
    <h2>Sub</h2><p>Three.</p></body></html>"""
    parsed = parse(html, "html")
    assert parsed.title == "Page"
    assert [(s.heading, s.text) for s in parsed.sections] == [
        ("Top", "One two.\n\nItem"),
        ("Top > Sub", "Three."),
    ]


def test_pdf_pages_are_sections() -> None:
    parsed = parse(make_pdf(["First page text.", "Second page text."], title="Manual"), "pdf")
    assert parsed.title == "Manual"
    assert [(s.page, s.heading, s.text) for s in parsed.sections] == [
        (1, "page 1", "First page text."),
        (2, "page 2", "Second page text."),
    ]
    with pytest.raises(ParseError):
        parse(b"%PDF-1.4 not really", "pdf")


def test_format_from_the_name_the_type_the_file_name_or_the_bytes() -> None:
    assert detect("markdown", "text/html", None, b"") == "markdown"
    assert detect(None, "application/pdf; x=1", None, b"") == "pdf"
    assert detect(None, "application/octet-stream", "notes.md", b"") == "markdown"
    assert detect(None, None, None, b"%PDF-1.7") == "pdf"
    assert detect(None, None, None, b"  <!DOCTYPE html><html>") == "html"
    assert detect(None, None, None, b"plain") == "text"
    with pytest.raises(ParseError):
        detect("docx", None, None, b"")
    with pytest.raises(ParseError):
        parse(b"\xff\xfe bad", "text")


def test_windows_respect_the_size_overlap_and_paragraph_ends() -> None:
    enc = encoding()
    paragraphs = [" ".join(f"w{p}x{i}" for i in range(30)) for p in range(8)]
    sections = parse("\n\n".join(paragraphs).encode(), "text").sections
    chunks = chunk(sections, Settings(max_tokens=100, overlap=20))
    assert len(chunks) > 3 and [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert all(c.tokens <= 100 and len(enc.encode(c.text)) <= 100 for c in chunks)
    # neighbours share text (the overlap) and every paragraph is in some chunk
    assert all(set(a.text.split()[-5:]) & set(b.text.split()) for a, b in itertools.pairwise(chunks))
    assert all(any(p[:20] in c.text for c in chunks) for p in paragraphs)


def test_chunks_never_cross_a_section() -> None:
    chunks = chunk(parse(MD, "markdown").sections, Settings(max_tokens=200, overlap=10))
    assert [c.heading for c in chunks] == [
        "Guide",
        "Guide > Install",
        "Guide > Install > Linux",
        "Guide > Use",
    ]


def test_the_same_text_gives_the_same_chunks_and_ids() -> None:
    settings = Settings(max_tokens=32, overlap=4)
    first, again = prepare(MD, "markdown", "guide", settings), prepare(MD, "markdown", "guide", settings)
    assert [(c.ordinal, c.text) for c in first.chunks] == [(c.ordinal, c.text) for c in again.chunks]
    assert first.content_hash == again.content_hash
    anonymous = prepare(MD, "markdown", None, settings)
    assert anonymous.doc_id == "doc-" + first.content_hash[:16]
    assert first.embedding_inputs()[1].startswith("Guide > Install\n")


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        Settings(max_tokens=8)
    with pytest.raises(ValueError):
        Settings(max_tokens=100, overlap=60)
