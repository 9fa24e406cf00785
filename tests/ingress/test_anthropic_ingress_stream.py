"""Anthropic Messages ingress: OpenAI chunks to Anthropic stream events, checked with the real SDK."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import anthropic._base_client
import orjson
import pytest
from anthropic_sdk import sdk_client, sdk_httpx
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from pydantic import TypeAdapter

from gateway.ingress.anthropic import (
    StreamTranslator,
)
from gateway.sse import SSEParser

STREAM_EVENT = TypeAdapter(anthropic.types.RawMessageStreamEvent)
OPENAI_REQUEST = TypeAdapter(CompletionCreateParamsBase)


# ---------------------------------------------------------------------------------------------
# Stream: OpenAI chunks -> Anthropic events


def _chunk(cid: str, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = (
        [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    )
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_06737a9306",
        "choices": choices,
        "usage": None,
        **extra,
    }


# As OpenAI sends them with stream_options.include_usage (ids shortened).
STREAM_TEXT: list[dict[str, Any]] = [
    _chunk("chatcmpl-t", {"role": "assistant", "content": "", "refusal": None}),
    _chunk("chatcmpl-t", {"content": "Hello"}),
    _chunk("chatcmpl-t", {"content": "! How"}),
    _chunk("chatcmpl-t", {"content": " can I help?"}),
    _chunk("chatcmpl-t", {}, "stop"),
    _chunk(
        "chatcmpl-t",
        None,
        usage={
            "prompt_tokens": 1200,
            "completion_tokens": 7,
            "total_tokens": 1207,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    ),
]


def _call(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return call


STREAM_TOOLS: list[dict[str, Any]] = [
    _chunk("chatcmpl-p", {"role": "assistant", "content": None, "refusal": None}),
    _chunk("chatcmpl-p", {"content": "Let me check."}),
    _chunk("chatcmpl-p", {"tool_calls": [_call(0, "", "call_paris", "weather")]}),
    _chunk("chatcmpl-p", {"tool_calls": [_call(0, '{"ci')]}),
    _chunk("chatcmpl-p", {"tool_calls": [_call(0, 'ty": "Pa')]}),
    _chunk("chatcmpl-p", {"tool_calls": [_call(0, 'ris"}')]}),
    _chunk("chatcmpl-p", {"tool_calls": [_call(1, "", "call_rome", "weather")]}),
    _chunk("chatcmpl-p", {"tool_calls": [_call(1, '{"city"')]}),
    _chunk("chatcmpl-p", {"tool_calls": [_call(1, ': "Rome", "days": 2}')]}),
    _chunk("chatcmpl-p", {}, "tool_calls"),
    _chunk("chatcmpl-p", None, usage={"prompt_tokens": 90, "completion_tokens": 51, "total_tokens": 141}),
]


def test_openai_stream_fixtures_are_valid() -> None:
    for chunk in [*STREAM_TEXT, *STREAM_TOOLS]:
        ChatCompletionChunk.model_validate(chunk)


def run(chunks: list[dict[str, Any]], *, model: str = "claude-haiku") -> bytes:
    translator = StreamTranslator(model=model, message_id="msg_test")
    frames = [frame for chunk in chunks for frame in translator.feed(chunk)]
    frames.extend(translator.finish())
    return b"".join(frames)


def events(stream: bytes) -> list[dict[str, Any]]:
    """Parse the SSE bytes; every frame must be a named event the SDK's own types accept."""
    parser = SSEParser()
    parsed = parser.feed(stream)
    assert not parser.pending
    out = []
    for event in parsed:
        payload = orjson.loads(event.data)
        assert event.event == payload["type"]
        if payload["type"] != "error":
            STREAM_EVENT.validate_python(payload)
        out.append(payload)
    return out


def test_text_stream_events() -> None:
    assert events(run(STREAM_TEXT)) == [
        {
            "type": "message_start",
            "message": {
                "id": "msg_test",
                "type": "message",
                "role": "assistant",
                "model": "claude-haiku",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "! How"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " can I help?"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 176,
                "output_tokens": 7,
                "cache_read_input_tokens": 1024,
                "cache_creation_input_tokens": 0,
            },
        },
        {"type": "message_stop"},
    ]


def test_frames_are_named_sse_events() -> None:
    translator = StreamTranslator(model="m", message_id="msg_1")
    (frame,) = translator.feed(STREAM_TEXT[0])
    assert frame.startswith(b"event: message_start\ndata: {")
    assert frame.endswith(b"}\n\n")


def test_parallel_tool_call_stream_events() -> None:
    out = events(run(STREAM_TOOLS))
    assert [(e["type"], e.get("index")) for e in out] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),  # the text block closes when the first tool block starts
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert out[4]["content_block"] == {"type": "tool_use", "id": "call_paris", "name": "weather", "input": {}}
    assert out[5]["delta"] == {"type": "input_json_delta", "partial_json": '{"ci'}
    assert out[9]["content_block"]["id"] == "call_rome"
    assert "".join(e["delta"]["partial_json"] for e in out[10:12]) == '{"city": "Rome", "days": 2}'
    assert out[13]["delta"]["stop_reason"] == "tool_use"
    assert out[13]["usage"]["output_tokens"] == 51
    assert out[13]["usage"]["input_tokens"] == 90


def test_finish_without_chunks_still_makes_a_valid_message() -> None:
    translator = StreamTranslator(model="m", message_id="msg_empty")
    out = events(b"".join(translator.finish()))
    assert [e["type"] for e in out] == ["message_start", "message_delta", "message_stop"]
    assert out[1]["usage"] == {"output_tokens": 0}
    assert out[1]["delta"]["stop_reason"] == "end_turn"
    assert translator.finish() == []
    assert translator.feed(STREAM_TEXT[1]) == []


def test_message_start_only_once_and_usage_exposed() -> None:
    translator = StreamTranslator(model="m", message_id="msg_1")
    first = translator.feed(STREAM_TEXT[0])
    assert len(first) == 1 and first[0].startswith(b"event: message_start")
    assert not any(f.startswith(b"event: message_start") for f in translator.feed(STREAM_TEXT[1]))
    for chunk in STREAM_TEXT[2:]:
        translator.feed(chunk)
    assert translator.usage is not None
    assert (translator.usage.prompt_tokens, translator.usage.cached_tokens) == (1200, 1024)


def test_stream_without_usage_chunk_reports_zero_output_tokens() -> None:
    out = events(run(STREAM_TEXT[:-1]))
    assert out[-2]["usage"] == {"output_tokens": 0}


def test_stream_finish_reasons() -> None:
    length = [STREAM_TEXT[1], _chunk("c", {}, "length")]
    assert events(run(length))[-2]["delta"]["stop_reason"] == "max_tokens"
    filtered = [STREAM_TEXT[1], _chunk("c", {}, "content_filter")]
    assert events(run(filtered))[-2]["delta"]["stop_reason"] == "refusal"
    # Some servers finish tool calls with "stop"; agent loops need tool_use.
    tools_stop = [*STREAM_TOOLS[:6], _chunk("c", {}, "stop")]
    assert events(run(tools_stop))[-2]["delta"]["stop_reason"] == "tool_use"


def test_text_after_a_tool_block_opens_a_new_text_block() -> None:
    chunks = [
        _chunk("c", {"tool_calls": [_call(0, "{}", "call_1", "now")]}),
        _chunk("c", {"content": "done"}),
        _chunk("c", {}, "stop"),
    ]
    out = events(run(chunks))
    assert [(e["type"], e.get("index")) for e in out[1:-2]] == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]
    assert out[4]["content_block"]["type"] == "text"


def test_tool_call_name_arriving_late_and_missing_ids() -> None:
    chunks = [
        _chunk("c", {"tool_calls": [{"index": 0, "id": "call_late", "function": {"arguments": '{"a"'}}]}),
        _chunk("c", {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ": 1}"}}]}),
        _chunk("c", {"tool_calls": [{"index": 1, "function": {"name": "g", "arguments": "{}"}}]}),
        _chunk("c", {"tool_calls": [{"index": 2, "function": {"arguments": "{}"}}]}),
        _chunk("c", {}, "tool_calls"),
    ]
    out = events(run(chunks))
    starts = [e["content_block"] for e in out if e["type"] == "content_block_start"]
    assert starts[0] == {"type": "tool_use", "id": "call_late", "name": "f", "input": {}}
    assert starts[1]["name"] == "g" and starts[1]["id"] == "toolu_test_1"
    # A call whose name never came is still emitted at finish, with its arguments.
    assert starts[2]["name"] == "" and starts[2]["id"] == "toolu_test_2"
    deltas = [
        e["delta"]["partial_json"] for e in out if e["type"] == "content_block_delta" and e["index"] == 0
    ]
    assert "".join(deltas) == '{"a": 1}'


def test_other_choices_are_ignored() -> None:
    chunk = _chunk("c", {"content": "zero"})
    chunk["choices"].append({"index": 1, "delta": {"content": "one"}, "finish_reason": None})
    out = events(run([chunk]))
    texts = [e["delta"]["text"] for e in out if e["type"] == "content_block_delta"]
    assert texts == ["zero"]


def test_error_frame() -> None:
    frame = StreamTranslator.error_frame("upstream went away", 502)
    assert frame.startswith(b"event: error\ndata: ")
    (payload,) = events(frame)
    assert payload == {"type": "error", "error": {"type": "api_error", "message": "upstream went away"}}
    assert events(StreamTranslator.error_frame("slow down", 429))[0]["error"]["type"] == "rate_limit_error"
    assert events(StreamTranslator.error_frame("busy", 529))[0]["error"]["type"] == "overloaded_error"


# ---------------------------------------------------------------------------------------------
# Streams through the real Anthropic SDK


def sse_client(stream: bytes) -> anthropic.Anthropic:
    def handler(request: Any) -> Any:
        assert json.loads(request.content)["stream"] is True
        return sdk_httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    return sdk_client(handler)


REQUEST: dict[str, Any] = {
    "model": "claude-haiku",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hi"}],
}


def test_sdk_accumulates_text_stream() -> None:
    with sse_client(run(STREAM_TEXT)).messages.stream(**REQUEST) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == "Hello! How can I help?"
    assert message.id == "msg_test"
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text == text
    # The SDK takes the cumulative counts from message_delta.
    assert message.usage.output_tokens == 7
    assert message.usage.input_tokens == 176
    assert message.usage.cache_read_input_tokens == 1024


def test_sdk_accumulates_parallel_tool_calls() -> None:
    with sse_client(run(STREAM_TOOLS)).messages.stream(**REQUEST) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "text" and message.content[0].text == "Let me check."
    tool_uses = [b for b in message.content if isinstance(b, anthropic.types.ToolUseBlock)]
    assert [(t.id, t.name, t.input) for t in tool_uses] == [
        ("call_paris", "weather", {"city": "Paris"}),
        ("call_rome", "weather", {"city": "Rome", "days": 2}),
    ]


def test_sdk_raw_events_with_create_stream_true() -> None:
    raw = sse_client(run(STREAM_TOOLS)).messages.create(**REQUEST, stream=True)
    kinds = [event.type for event in raw]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 3


def test_sdk_accumulates_interleaved_tool_fragments() -> None:
    """An upstream that interleaves parallel calls still yields the right final message."""
    chunks = [
        _chunk("c", {"tool_calls": [_call(0, '{"city": ', "call_a", "weather")]}),
        _chunk("c", {"tool_calls": [_call(1, '{"city": ', "call_b", "weather")]}),
        _chunk("c", {"tool_calls": [_call(0, '"Oslo"}')]}),
        _chunk("c", {"tool_calls": [_call(1, '"Lima"}')]}),
        _chunk("c", {}, "tool_calls"),
    ]
    with sse_client(run(chunks)).messages.stream(**REQUEST) as stream:
        message = stream.get_final_message()
    assert [b.input for b in message.content if isinstance(b, anthropic.types.ToolUseBlock)] == [
        {"city": "Oslo"},
        {"city": "Lima"},
    ]


def test_sdk_raises_on_error_event_mid_stream() -> None:
    translator = StreamTranslator(model="m", message_id="msg_err")
    stream = b"".join(
        [*translator.feed(STREAM_TEXT[1]), StreamTranslator.error_frame("upstream went away", 502)]
    )
    with pytest.raises(anthropic.APIStatusError, match="upstream went away"):  # noqa: SIM117
        with sse_client(stream).messages.stream(**REQUEST) as events_stream:
            events_stream.get_final_message()
