"""OpenAI <-> Anthropic translation, over recorded Anthropic streams and bodies (tests/providers/fixtures)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.errors import BadRequest, UpstreamStatusError, UpstreamUnavailable
from gateway.providers.anthropic_response import StreamTranslator, error_from_response, to_openai_response
from gateway.providers.anthropic_translate import to_anthropic_request
from gateway.providers.base import Usage
from gateway.sse import Event, SSEParser

FIXTURES = Path(__file__).parent / "fixtures"
MODEL = "claude-haiku"
CREATED = 1_700_000_000


def events(name: str) -> list[Event]:
    parser = SSEParser()
    return parser.feed((FIXTURES / name).read_bytes())


def translate(name: str) -> tuple[StreamTranslator, list[dict[str, Any]]]:
    translator = StreamTranslator(model=MODEL, created=CREATED)
    frames = [frame for event in events(name) for frame in translator.feed(event)]
    return translator, [parse_frame(f) for f in frames]


def parse_frame(frame: bytes) -> dict[str, Any]:
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    parsed: dict[str, Any] = orjson.loads(frame[len(b"data: ") : -2])
    return parsed


def chunk(cid: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def req(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hi"}], **fields}


def bad_param(body: dict[str, Any]) -> str | None:
    with pytest.raises(BadRequest) as info:
        to_anthropic_request(body)
    assert info.value.status == 400
    assert info.value.message.startswith(f"{info.value.param}: ")
    return info.value.param


# --- streams ----------------------------------------------------------------------------------------


def test_text_stream_chunks_exactly() -> None:
    translator, chunks = translate("text_stream.sse")
    cid = "chatcmpl-01XFDUDYJgAACzvnptvVoYEL"
    assert chunks == [
        chunk(cid, {"role": "assistant", "content": ""}),
        chunk(cid, {"content": "Hello"}),
        chunk(cid, {"content": "! How can I help?"}),
        chunk(cid, {}, "stop"),
    ]
    assert translator.done
    assert translator.usage == Usage(prompt_tokens=25, completion_tokens=12)
    assert translator.usage_frame is not None
    assert parse_frame(translator.usage_frame) == {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [],
        "usage": {
            "prompt_tokens": 25,
            "completion_tokens": 12,
            "total_tokens": 37,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def test_tool_stream_renumbers_tool_calls_and_skips_thinking() -> None:
    translator, chunks = translate("tool_stream.sse")
    cid = "chatcmpl-014p7gG3wDgGV9EUtLvnow3U"
    first_call = {"name": "get_weather", "arguments": ""}
    assert chunks == [
        chunk(cid, {"role": "assistant", "content": ""}),
        chunk(cid, {"content": "I'll check both cities."}),
        chunk(
            cid,
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                        "type": "function",
                        "function": first_call,
                    }
                ]
            },
        ),
        chunk(cid, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}),
        chunk(cid, {"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]}),
        chunk(
            cid,
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "toolu_01Qk3WJ8uBDi4gqvU9Fh2AzN",
                        "type": "function",
                        "function": first_call,
                    }
                ]
            },
        ),
        chunk(cid, {"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Tokyo"}'}}]}),
        chunk(cid, {}, "tool_calls"),
    ]
    assert translator.usage == Usage(prompt_tokens=472, completion_tokens=89)
    # The argument fragments of each call concatenate to its JSON input.
    args = ["", ""]
    for c in chunks:
        for call in c["choices"][0]["delta"].get("tool_calls", []):
            args[call["index"]] += call["function"]["arguments"]
    assert [orjson.loads(a) for a in args] == [{"city": "Paris"}, {"city": "Tokyo"}]


def test_cache_stream_ignores_pings_and_counts_cached_input() -> None:
    translator, chunks = translate("cache_stream.sse")
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "The contract runs"},
        {"content": " until"},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # input_tokens is only the uncached part: prompt = 12 + 1800 read + 200 written.
    assert translator.usage == Usage(
        prompt_tokens=2012, completion_tokens=4, cached_tokens=1800, cache_write_tokens=200
    )
    assert translator.usage_frame is not None
    assert parse_frame(translator.usage_frame)["usage"] == {
        "prompt_tokens": 2012,
        "completion_tokens": 4,
        "total_tokens": 2016,
        "prompt_tokens_details": {"cached_tokens": 1800},
    }


def test_message_delta_cumulative_counts_override_message_start() -> None:
    t = StreamTranslator(model=MODEL, created=CREATED)
    start = {"id": "msg_1", "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}}
    t.feed(Event("message_start", orjson.dumps({"type": "message_start", "message": start})))
    final = {"input_tokens": 11, "cache_read_input_tokens": None, "output_tokens": 7}
    t.feed(Event("message_delta", orjson.dumps({"type": "message_delta", "delta": {}, "usage": final})))
    # null in message_delta means "not reported here": message_start's count stands.
    assert t.usage == Usage(prompt_tokens=16, completion_tokens=7, cached_tokens=5)


def test_no_usage_before_message_delta() -> None:
    translator = StreamTranslator(model=MODEL, created=CREATED)
    for event in events("text_stream.sse")[:5]:
        translator.feed(event)
    assert translator.usage is None and translator.usage_frame is None and not translator.done


def test_error_event_raises_upstream_status_error() -> None:
    translator = StreamTranslator(model=MODEL, created=CREATED)
    recorded = events("error_stream.sse")
    frames = [f for e in recorded[:-1] for f in translator.feed(e)]
    assert parse_frame(frames[-1])["choices"][0]["delta"] == {"content": "Once upon"}
    with pytest.raises(UpstreamStatusError) as info:
        translator.feed(recorded[-1])
    assert (info.value.status, info.value.message, info.value.code) == (529, "Overloaded", "overloaded_error")
    assert info.value.type == "server_error" and info.value.retryable


def test_other_error_events_are_500() -> None:
    payload = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
    with pytest.raises(UpstreamStatusError) as info:
        StreamTranslator(model=MODEL, created=CREATED).feed(Event("error", orjson.dumps(payload)))
    assert (info.value.status, info.value.message) == (500, "Internal server error")


def test_truncated_stream_is_not_done() -> None:
    translator, chunks = translate("truncated_stream.sse")
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Part"},
    ]
    assert not translator.done and translator.usage is None


def test_content_before_message_start_is_malformed() -> None:
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    with pytest.raises(UpstreamUnavailable):
        StreamTranslator(model=MODEL, created=CREATED).feed(Event("content_block_start", orjson.dumps(block)))


def test_non_json_event_is_malformed() -> None:
    with pytest.raises(UpstreamUnavailable):
        StreamTranslator(model=MODEL, created=CREATED).feed(Event("message_start", b"{not json"))


def test_unknown_events_are_ignored() -> None:
    t = StreamTranslator(model=MODEL, created=CREATED)
    assert t.feed(Event("ping", b"")) == []
    assert t.feed(Event("future_event", b'{"type":"future_event"}')) == []


@pytest.mark.parametrize("name", ["text_stream.sse", "tool_stream.sse", "cache_stream.sse"])
def test_chunks_parse_with_the_openai_sdk(name: str) -> None:
    translator, chunks = translate(name)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    assert translator.usage_frame is not None
    usage_chunk = ChatCompletionChunk.model_validate(parse_frame(translator.usage_frame))
    assert usage_chunk.usage is not None and usage_chunk.choices == []


# --- non-streaming responses ------------------------------------------------------------------------

TOOL_MESSAGE = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "Two cities, two calls.", "signature": "EqQBCgIYAhIM"},
        {"type": "text", "text": "I'll check both cities."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"city": "Tokyo"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 30,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2000,
        "output_tokens": 61,
    },
}


def test_tool_use_response() -> None:
    body, usage = to_openai_response(TOOL_MESSAGE, model=MODEL, created=CREATED)
    assert body == {
        "id": "chatcmpl-01Aq9w938a90dw8q",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "I'll check both cities.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "toolu_01A",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "toolu_01B",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'},
                        },
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 2130,
            "completion_tokens": 61,
            "total_tokens": 2191,
            "prompt_tokens_details": {"cached_tokens": 2000},
        },
    }
    assert usage == Usage(
        prompt_tokens=2130, completion_tokens=61, cached_tokens=2000, cache_write_tokens=100
    )
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.tool_calls is not None


def test_text_response_joins_blocks() -> None:
    msg = {
        "id": "msg_1",
        "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world."}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }
    body, usage = to_openai_response(msg, model=MODEL)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello, world.", "refusal": None}
    assert isinstance(body["created"], int) and body["created"] > CREATED
    assert usage == Usage(prompt_tokens=5, completion_tokens=3)
    ChatCompletion.model_validate(body)


def test_response_without_text_has_null_content() -> None:
    msg = {"id": "msg_1", "content": [], "stop_reason": "end_turn", "usage": {}}
    body, _ = to_openai_response(msg, model=MODEL)
    assert body["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reasons(stop_reason: str | None, finish: str) -> None:
    msg = {"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}
    body, _ = to_openai_response(msg, model=MODEL)
    assert body["choices"][0]["finish_reason"] == finish


def test_response_without_content_list_is_malformed() -> None:
    with pytest.raises(UpstreamUnavailable):
        to_openai_response({"id": "msg_1", "content": "oops"}, model=MODEL)


# --- errors -----------------------------------------------------------------------------------------


def test_error_from_anthropic_envelope() -> None:
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}'
    err = error_from_response(400, body, {})
    assert (err.status, err.message, err.type, err.code) == (
        400,
        "max_tokens: Field required",
        "invalid_request_error",
        "invalid_request_error",
    )
    assert not err.retryable


def test_error_429_keeps_retry_after_case_insensitively() -> None:
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"Too many request tokens"}}'
    err = error_from_response(429, body, {"Retry-After": "17"})
    assert (err.status, err.type, err.retry_after) == (429, "rate_limit_error", "17")
    assert err.headers["retry-after"] == "17"


def test_error_overloaded_is_server_error() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    err = error_from_response(529, body, {})
    assert (err.status, err.type, err.code, err.message) == (
        529,
        "server_error",
        "overloaded_error",
        "Overloaded",
    )
    assert err.retryable


def test_error_non_json_body_is_quoted_and_truncated() -> None:
    err = error_from_response(502, b"<html>" + b"x" * 1000 + b"</html>", {})
    assert err.message.startswith("<html>xxx") and len(err.message) == 500
    assert err.type == "server_error"
    assert error_from_response(503, b"", {}).message == "upstream answered HTTP 503"


# --- requests ---------------------------------------------------------------------------------------


def test_minimal_request() -> None:
    assert to_anthropic_request(req()) == {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def test_system_and_developer_messages_become_system() -> None:
    one = to_anthropic_request(
        req(messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}])
    )
    assert one["system"] == "Be terse."
    many = to_anthropic_request(
        req(
            messages=[
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "hi"},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
                {"role": "user", "content": "weather?"},
            ]
        )
    )
    assert many["system"] == [
        {"type": "text", "text": "Be terse."},
        {"type": "text", "text": "Use metric units."},
    ]
    # With the system turn hoisted out, the two user turns are adjacent and merge.
    assert many["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "weather?"}]}
    ]


def test_multipart_user_content_and_images() -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    out = to_anthropic_request(req(messages=[{"role": "user", "content": content}]))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_pdf_file_part_becomes_document() -> None:
    part = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
    }
    out = to_anthropic_request(req(messages=[{"role": "user", "content": [part]}]))
    assert out["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
        }
    ]


def test_cache_control_on_parts_is_kept() -> None:
    part = {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}
    out = to_anthropic_request(
        req(messages=[{"role": "system", "content": [part]}, {"role": "user", "content": "q"}])
    )
    assert out["system"] == [{"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}]


def test_tool_round_trip_messages() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12:00"}]},
        {"role": "user", "content": "Thanks"},
    ]
    out = to_anthropic_request(req(messages=messages))
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Tokyo?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "12:00"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]


def test_assistant_with_only_tool_calls_has_null_content() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    out = to_anthropic_request(
        req(
            messages=[
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
            ]
        )
    )
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {}}],
    }


def test_tools_and_tool_choice() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "now"}},
    ]
    out = to_anthropic_request(req(tools=tools, tool_choice="auto"))
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert out["tool_choice"] == {"type": "auto"}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "now"}}, None, {"type": "tool", "name": "now"}),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "now"}},
            False,
            {"type": "tool", "name": "now", "disable_parallel_tool_use": True},
        ),
        ("none", False, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, True, None),
        (None, None, None),
    ],
)
def test_tool_choice_mapping(choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    body = req(tools=[{"type": "function", "function": {"name": "now"}}])
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert to_anthropic_request(body).get("tool_choice") == expected


def test_tool_choice_without_tools_is_dropped() -> None:
    out = to_anthropic_request(req(tool_choice="required", parallel_tool_calls=False))
    assert "tool_choice" not in out and "tools" not in out


def test_stop_sequences() -> None:
    assert to_anthropic_request(req(stop="END"))["stop_sequences"] == ["END"]
    assert to_anthropic_request(req(stop=["a", "b"]))["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in to_anthropic_request(req(stop=None))


def test_max_tokens() -> None:
    assert to_anthropic_request(req(max_tokens=100))["max_tokens"] == 100
    assert to_anthropic_request(req(max_completion_tokens=200))["max_tokens"] == 200
    assert to_anthropic_request(req(max_tokens=100, max_completion_tokens=200))["max_tokens"] == 200
    assert to_anthropic_request(req(), default_max_tokens=1024)["max_tokens"] == 1024


def test_sampling_stream_and_user() -> None:
    out = to_anthropic_request(req(temperature=0.2, top_p=0.9, stream=True, metadata={"user": "u-42"}))
    assert (out["temperature"], out["top_p"], out["stream"], out["metadata"]) == (
        0.2,
        0.9,
        True,
        {"user_id": "u-42"},
    )
    # OpenAI allows temperature up to 2; Anthropic up to 1.
    assert to_anthropic_request(req(temperature=1.7))["temperature"] == 1
    assert to_anthropic_request(req(user="legacy-user"))["metadata"] == {"user_id": "legacy-user"}
    assert "stream" not in to_anthropic_request(req(stream=False))


def test_unknown_openai_fields_are_dropped_and_anthropic_knobs_kept() -> None:
    out = to_anthropic_request(
        req(
            seed=7,
            n=1,
            logprobs=True,
            frequency_penalty=0.5,
            presence_penalty=0.5,
            stream_options={"include_usage": True},
            service_tier="flex",
            reasoning_effort="low",
            metadata={"team": "x"},
            top_k=40,
        )
    )
    assert set(out) == {"model", "max_tokens", "messages", "top_k"}
    assert out["top_k"] == 40


def test_json_object_response_format_appends_instruction() -> None:
    out = to_anthropic_request(req(response_format={"type": "json_object"}))
    assert isinstance(out["system"], str) and "JSON object" in out["system"]
    with_system = to_anthropic_request(
        req(
            messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
            response_format={"type": "json_object"},
        )
    )
    assert with_system["system"][0] == {"type": "text", "text": "Be terse."}
    assert "JSON object" in with_system["system"][1]["text"]
    assert "system" not in to_anthropic_request(req(response_format={"type": "text"}))


def test_json_schema_response_format_includes_schema() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
    out = to_anthropic_request(req(response_format=fmt))
    assert out["system"].endswith(orjson.dumps(schema).decode())
    assert "response_format" not in out


def test_request_is_not_mutated() -> None:
    body = req(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
        ],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    before = copy.deepcopy(body)
    to_anthropic_request(body)
    assert body == before


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"model": None}, "model"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    },
                ]
            },
            "messages[2].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}
                ]
            },
            "messages[0].tool_calls[0].id",
        ),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"},
            "tool_choice",
        ),
        ({"stop": 5}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": "100"}, "max_completion_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_bad_shapes_name_their_path(fields: dict[str, Any], param: str) -> None:
    assert bad_param(req(**fields)) == param
