"""gateway/sse.py: the incremental SSE parser."""

from __future__ import annotations

import random

import pytest

from gateway.sse import Event, LimitExceeded, SSEParser


def test_events_come_one_at_a_time_and_a_partial_event_waits_for_its_end() -> None:
    parser = SSEParser()
    events = parser.events(b'data: {"a":1}\n\n: keepalive\n\nevent: ping\ndata: x\n\ndata: {"b"')
    assert next(events) == Event(None, b'{"a":1}')  # the rest of the chunk is not parsed yet
    assert list(events) == [Event("ping", b"x")]
    assert parser.feed(b":2}\r\n\r\ndata: [DONE]\n\n") == [Event(None, b'{"b":2}'), Event(None, b"[DONE]")]
    assert not parser.pending


def test_multi_line_data_is_joined_and_a_missing_final_blank_line_is_flushed() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: one\ndata: two\n\ndata: last") == [Event(None, b"one\ntwo")]
    assert parser.pending
    assert parser.flush() == [Event(None, b"last")]


def _reference(stream: bytes) -> list[Event]:
    """The events of a whole stream, parsed at once (what any split into chunks must give)."""
    parser = SSEParser()
    return parser.feed(stream) + parser.flush()


def test_any_split_into_chunks_gives_the_same_events() -> None:
    rng = random.Random(16)
    stream = (
        b'data: {"a":1}\n\n: keepalive\r\n\r\nevent: ping\r\ndata: x\r\n\r\ndata: one\ndata: two\n\n'
        b"data: cr only\r\rdata: [DONE]\n\n" * 20
    )
    expected = _reference(stream)
    assert len(expected) == 100
    for _ in range(200):
        parser, events, at = SSEParser(), [], 0
        while at < len(stream):
            step = rng.choice((1, 2, 3, 7, 64, 500))
            events += parser.feed(stream[at : at + step])
            at += step
        assert events + parser.flush() == expected


def test_an_event_past_max_event_fails_whether_it_ends_or_not() -> None:
    # a line that never ends, fed in small chunks: refused once it passes the limit
    parser = SSEParser(max_event=4096)
    assert parser.feed(b"data: ") == []
    with pytest.raises(LimitExceeded) as info:
        for _ in range(1000):
            parser.feed(b"x" * 100)
    assert (info.value.what, info.value.limit) == ("event", 4096)
    assert not parser.pending  # what it held is let go
    # a whole event over the limit, in one chunk
    with pytest.raises(LimitExceeded):
        SSEParser(max_event=4096).feed(b"data: " + b"y" * 5000 + b"\n\ndata: z\n\n")
    # at the limit is fine
    assert SSEParser(max_event=4096).feed(b"data: " + b"y" * 4090 + b"\n\n")[0].data == b"y" * 4090


def test_a_stream_past_max_total_fails() -> None:
    parser = SSEParser(max_total=10_000)
    frame = b"data: " + b"q" * 994 + b"\n\n"  # 1,002 bytes
    for _ in range(9):
        assert len(parser.feed(frame)) == 1
    with pytest.raises(LimitExceeded) as info:
        parser.feed(frame)
    assert info.value.what == "stream"


def test_a_long_partial_event_is_searched_once() -> None:
    """A line arriving in many chunks is not re-scanned per chunk (the quadratic buffering of issue 16):
    the search for its end resumes where the last one stopped."""
    parser = SSEParser()
    parser.feed(b"data: ")
    for _ in range(2000):
        parser.feed(b"x" * 512)
        assert parser._scanned == len(parser._buf) - 1  # everything before the last byte was searched
    assert parser.feed(b"\n\n") == [Event(None, b"x" * 512 * 2000)]
