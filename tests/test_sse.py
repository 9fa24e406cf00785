"""gateway/sse.py: the incremental SSE parser."""

from __future__ import annotations

from gateway.sse import Event, SSEParser


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
