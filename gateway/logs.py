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
        self._lines.append(line)
        if record.levelno >= logging.WARNING or len(self._lines) >= self.max_lines:
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
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
