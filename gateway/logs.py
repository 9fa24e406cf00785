"""Where log lines go: stderr, one line per record, written in small batches.

The access log writes one JSON line per request. A write (and flush) per line is a syscall per
request, a measurable part of the gateway's CPU, so lines logged from the event loop are buffered
and written together at most ``interval_s`` later (or at once when ``max_lines`` are waiting).
WARNING and above, lines logged outside an event loop, and everything at interpreter exit
(``logging.shutdown``) are written at once, so nothing is held back where it matters.

``configure`` is called by ``python -m gateway serve`` and again by each uvicorn worker process
(spawned workers start with an unconfigured root logger, which would drop INFO lines).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import TextIO

LEVEL_ENV = "GATEWAY_LOG_LEVEL"
_PLAIN = "%(message)s"
# Strings a client chose (a model name, a trace id, a path) are cut to this many characters in log
# lines: without a cap a keyless 9 MB ``model`` made a 9 MB line on its 401.
MAX_LOGGED_CHARS = 256


def clip(text: str | None, limit: int = MAX_LOGGED_CHARS) -> str | None:
    """``text`` as a log line may carry it: at most ``limit`` characters, then a marker that says
    how many were cut (``…[+9437184 chars]``)."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}…[+{len(text) - limit} chars]"


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(
        self, stream: TextIO | None = None, *, interval_s: float = 0.05, max_lines: int = 256
    ) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.interval_s = interval_s
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging's contract: a broken record is reported, never raised
            self.handleError(record)
            return
        self.add(line, record.levelno)

    def add(self, line: str, level: int = logging.INFO) -> None:
        """Queue one formatted line (``emit`` without the record)."""
        self._lines.append(line)
        if level >= logging.WARNING or len(self._lines) >= self.max_lines:
            self.flush()
            return
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop (start-up, a thread): no timer to rely on
            self.flush()
            return
        self._scheduled = True
        loop.call_later(self.interval_s, self._flush_later)

    def _flush_later(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._lines:
                lines, self._lines = self._lines, []
                self.stream.write("\n".join(lines) + "\n")
            super().flush()
        finally:
            self.release()


def info_line(logger: logging.Logger, line: str) -> None:
    """``logger.info(line)`` for a logger whose records nothing but ``configure``'s handler sees.

    A ``LogRecord`` costs about 8 µs (frame lookups, path functions, a dozen attributes), a measurable
    part of a request when the access log writes one line each. When the logger and its ancestors
    have no filters and no handlers but the root's lone ``BatchingHandler`` with its ``%(message)s``
    format, the line goes straight to that handler: the output is the same. Any other set-up (a test's
    capture handler, an application's own handlers or filters) gets the record, as before.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _sole_handler(logger)
    if handler is None:
        logger.info(line)
    else:
        handler.add(line)


def _sole_handler(logger: logging.Logger) -> BatchingHandler | None:
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        if node.handlers:
            break
        if not node.propagate:
            return None
        node = node.parent
    if node is None or len(node.handlers) != 1:
        return None
    handler = node.handlers[0]
    if (
        type(handler) is not BatchingHandler
        or handler.filters
        or handler.level > logging.INFO
        or handler.formatter is None
        or handler.formatter._fmt != _PLAIN
    ):
        return None
    return handler


def configure(level: str | None = None) -> None:
    """Send the root logger's records to a ``BatchingHandler`` once per process; set the level."""
    name = (level or os.environ.get(LEVEL_ENV) or "info").upper()
    # The lines are "%(message)s": skip looking up the process and thread for every record (a getpid()
    # syscall each, on Python 3.11).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.setLevel(name)
    if not any(isinstance(h, BatchingHandler) for h in root.handlers):
        handler = BatchingHandler()
        handler.setFormatter(logging.Formatter(_PLAIN))
        root.addHandler(handler)
