"""Log output: the batching handler, and the access log's short cut past ``LogRecord``."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.logs import BatchingHandler, configure, info_line


@pytest.fixture
def root_handler() -> Iterator[BatchingHandler]:
    """The root logger as ``configure`` leaves it (pytest's own capture handlers taken off for the
    test), writing to a string; every record made is counted in ``made``. All put back afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_factory = logging.getLogRecordFactory()
    made.clear()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = saved_factory(*args, **kwargs)
        made.append(record.getMessage())
        return record

    root.handlers = []
    try:
        configure("info")
        (handler,) = root.handlers
        assert isinstance(handler, BatchingHandler)
        handler.setStream(io.StringIO())
        logging.setLogRecordFactory(counting)
        yield handler
    finally:
        logging.setLogRecordFactory(saved_factory)
        root.handlers = saved_handlers
        root.setLevel(saved_level)


made: list[str] = []


def only(handler: BatchingHandler) -> None:
    """Drop the handlers pytest added to the root for this test's call phase."""
    logging.getLogger().handlers = [handler]


def written(handler: BatchingHandler) -> str:
    handler.flush()
    stream = handler.stream
    assert isinstance(stream, io.StringIO)
    return stream.getvalue()


def test_a_line_comes_out_as_logging_would_write_it(root_handler: BatchingHandler) -> None:
    only(root_handler)
    logger = logging.getLogger("gateway.test-logs")
    logger.info('{"via":"logging"}')
    info_line(logger, '{"via":"short cut"}')
    assert written(root_handler) == '{"via":"logging"}\n{"via":"short cut"}\n'
    assert made == ['{"via":"logging"}']  # the short cut made no record


def test_a_logger_filter_still_sees_every_line(root_handler: BatchingHandler) -> None:
    logger = logging.getLogger("gateway.test-logs.filtered")
    seen: list[str] = []

    def keep_some(record: logging.LogRecord) -> bool:
        seen.append(record.getMessage())
        return "drop" not in record.getMessage()

    only(root_handler)
    logger.addFilter(keep_some)
    try:
        info_line(logger, "keep me")
        info_line(logger, "drop me")
    finally:
        logger.removeFilter(keep_some)
    assert seen == ["keep me", "drop me"]
    assert written(root_handler) == "keep me\n"


def test_another_handler_gets_the_record(root_handler: BatchingHandler) -> None:
    logger = logging.getLogger("gateway.test-logs.extra")
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    extra = Collect()
    only(root_handler)
    logging.getLogger().addHandler(extra)
    try:
        info_line(logger, "to both")
    finally:
        logging.getLogger().removeHandler(extra)
    assert [r.getMessage() for r in records] == ["to both"]
    assert records[0].name == "gateway.test-logs.extra"
    assert written(root_handler) == "to both\n"


def test_nothing_is_written_below_the_level(root_handler: BatchingHandler) -> None:
    only(root_handler)
    logger = logging.getLogger("gateway.test-logs.quiet")
    logging.getLogger().setLevel(logging.WARNING)
    info_line(logger, "not wanted")
    assert written(root_handler) == ""
    assert made == []


def test_a_formatted_handler_gets_the_record_not_the_bare_line(root_handler: BatchingHandler) -> None:
    only(root_handler)
    root_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    info_line(logging.getLogger("gateway.test-logs.fmt"), "hello")
    assert written(root_handler) == "INFO gateway.test-logs.fmt hello\n"
