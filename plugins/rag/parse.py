"""Documents in, sections out: plain text, Markdown, HTML (beautifulsoup4) and PDF (pypdf).

A ``Section`` is a run of text under one heading path (``Guide > Install > Linux``), or one PDF page;
its paragraphs are separated by blank lines. The chunker never lets a chunk cross a section, so a chunk's
heading path says where its text came from.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Literal

Format = Literal["text", "markdown", "html", "pdf"]
FORMATS: tuple[Format, ...] = ("text", "markdown", "html", "pdf")
HEADING_SEPARATOR = " > "

_BY_TYPE: dict[str, Format] = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
_BY_SUFFIX: dict[str, Format] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}


class ParseError(ValueError):
    """The document cannot be read as the format it was given as."""


@dataclass(frozen=True, slots=True)
class Section:
    headings: tuple[str, ...]
    text: str
    page: int | None = None

    @property
    def heading(self) -> str:
        return HEADING_SEPARATOR.join(self.headings)


@dataclass(slots=True)
class Parsed:
    sections: list[Section]
    title: str | None = None
    format: Format = "text"
    warnings: list[str] = field(default_factory=list)


def detect(format: str | None, content_type: str | None, filename: str | None, data: bytes) -> Format:
    """The format named, else the one the content type or the file name says, else sniffed, else text."""
    if format:
        if format not in FORMATS:
            raise ParseError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
        return format
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in _BY_TYPE:
        return _BY_TYPE[kind]
    suffix = "." + (filename or "").rsplit(".", 1)[-1].lower() if filename and "." in filename else ""
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    if data.startswith(b"%PDF-"):
        return "pdf"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    return "text"


def parse(data: bytes, format: Format) -> Parsed:
    if format == "pdf":
        return _pdf(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(
            f"a {format} document must be UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    if format == "markdown":
        return _markdown(text)
    if format == "html":
        return _html(text)
    return Parsed([Section((), text)] if text.strip() else [], None, "text")


_MD_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_MD_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def _markdown(text: str) -> Parsed:
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    title = None
    fence: str | None = None

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(tuple(h for _, h in path), body))
        lines.clear()

    for line in text.splitlines():
        opening = _MD_FENCE.match(line)
        if opening:  # headings inside a code block are code
            fence = None if fence == opening.group(1) else fence or opening.group(1)
        heading = _MD_HEADING.match(line) if fence is None else None
        if heading is None:
            lines.append(line)
            continue
        flush()
        level, name = len(heading.group(1)), heading.group(2).strip()
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, name))
        if title is None and level == 1:
            title = name
    flush()
    return Parsed(sections, title, "markdown")


_HTML_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_HTML_BLOCKS = ("p", "li", "pre", "blockquote", "td", "th", "dt", "dd", "figcaption", "caption")
_HTML_DROP = ("script", "style", "noscript", "template", "nav", "svg", "head")


def _html(text: str) -> Parsed:
    from bs4 import BeautifulSoup  # imported on use: most sidecar processes only read Markdown

    soup = BeautifulSoup(text, "html.parser")
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else None
    for tag in soup(list(_HTML_DROP)):
        tag.decompose()
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    paragraphs: list[str] = []

    def flush() -> None:
        body = "\n\n".join(p for p in paragraphs if p)
        if body:
            sections.append(Section(tuple(h for _, h in path), body))
        paragraphs.clear()

    for tag in soup.find_all([*_HTML_HEADINGS, *_HTML_BLOCKS]):
        if tag.name in _HTML_HEADINGS:
            flush()
            level, name = int(tag.name[1]), tag.get_text(" ", strip=True)
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, name))
            title = title or (name if level == 1 else None)
        elif not tag.find_parent(list(_HTML_BLOCKS)):  # a <p> inside an <li> is read once, with the <li>
            # preformatted text keeps its lines and indentation
            paragraphs.append(tag.get_text().strip("\n") if tag.name == "pre" else _squash(tag.get_text(" ")))
    flush()
    if not sections:  # no block elements at all: the page's text as one section
        body = _squash(soup.get_text(" ", strip=True))
        sections = [Section((), body)] if body else []
    return Parsed(sections, title, "html")


def _squash(text: str) -> str:
    # get_text(" ") puts a blank between inline elements: "<b>two</b>." reads "two ." without this
    return re.sub(r" ([.,;:!?)])", r"\1", re.sub(r"[ \t\r\f\v]+", " ", text)).strip()


def _pdf(data: bytes) -> Parsed:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        meta_title = reader.metadata.title if reader.metadata else None
        sections: list[Section] = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            # pypdf gives line breaks: blank lines stay paragraph breaks, single ones become spaces
            paragraphs = [_squash(p.replace("\n", " ")) for p in re.split(r"\n\s*\n", text)]
            body = "\n\n".join(p for p in paragraphs if p)
            if body:
                sections.append(Section((f"page {number}",), body, page=number))
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise ParseError(f"the PDF cannot be read: {exc}") from exc
    return Parsed(sections, str(meta_title) if meta_title else None, "pdf")
