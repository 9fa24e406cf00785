"""The pure chat-chunk → Responses-event translator, on a recorded stream (text, then two tool calls)."""

from __future__ import annotations

import json
from typing import Any

from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.ingress.responses import to_chat_request
from gateway.ingress.responses_stream import StreamTranslator

EVENT = TypeAdapter(ResponseStreamEvent)

RECORDED: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Let me "}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "check."}, "finish_reason": None}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ]
                },
                "finish_reason": None,
            }
        ]
    },
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}]
                },
            }
        ]
    },
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {
        "choices": [],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    },
]


def parse(frames: list[bytes]) -> list[Any]:
    events = []
    for frame in frames:
        name, data = frame.decode().split("\n")[:2]
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        events.append(EVENT.validate_python(payload))
    return events


def test_recorded_stream_translates_to_the_sdk_event_sequence() -> None:
    _, echo, _ = to_chat_request({"model": "m", "input": "hi"})
    translator = StreamTranslator(response_id="resp_abc", created_at=1, echo=echo)
    frames: list[bytes] = []
    for chunk in RECORDED:
        frames += translator.feed(chunk)
    frames += translator.finish()
    events = parse(frames)
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    assert final.output[0].content[0].text == "Let me check."
    assert (final.output[1].call_id, final.output[1].arguments) == ("call_a", '{"x":1}')
    assert [e.output_index for e in events if e.type == "response.output_item.done"] == [0, 1, 2]
    usage = final.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (10, 7, 17)
    assert usage.input_tokens_details.cached_tokens == 4
    assert usage.output_tokens_details.reasoning_tokens == 2
    assert translator.final == json.loads(final.model_dump_json(exclude_unset=True))


def test_length_finish_is_incomplete_and_failure_is_error_then_failed() -> None:
    _, echo, _ = to_chat_request({"model": "m", "input": "hi"})
    translator = StreamTranslator(response_id="resp_x", created_at=1, echo=echo)
    frames = translator.feed(RECORDED[1])
    frames += translator.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    events = parse(frames + translator.finish())
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.output[0].status == "incomplete"

    broken = StreamTranslator(response_id="resp_y", created_at=1, echo=echo)
    frames = broken.feed(RECORDED[1])
    tail = broken.fail("upstream went away", "upstream_error")
    events = parse(frames + [f + b"\n\n" for f in tail.split(b"\n\n") if f])
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "upstream_error" and events[-1].response.status == "failed"


def test_to_response_validates_strictly_against_the_sdk_type() -> None:
    from openai.types.responses import Response

    from gateway.ingress.responses import to_response

    _, echo, _ = to_chat_request(
        {
            "model": "m",
            "input": "hi",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_object"}},
            "max_output_tokens": 5,
        }
    )
    message = {
        "role": "assistant",
        "content": "partial",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    answer = {
        "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5},
    }
    body = to_response(answer, response_id="resp_1", created_at=1, echo=echo)
    response = Response.model_validate(body, strict=False)
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.output_text == "partial" and response.output[1].type == "function_call"
    assert response.tool_choice.type == "function"  # type: ignore[union-attr]
    assert response.max_output_tokens == 5 and response.text.format.type == "json_object"  # type: ignore[union-attr]
    refusal = {"choices": [{"message": {"role": "assistant", "content": None, "refusal": "No."}}]}
    refused = Response.model_validate(to_response(refusal, response_id="resp_2", created_at=1, echo=echo))
    assert refused.output[0].content[0].type == "refusal"  # type: ignore[union-attr]
