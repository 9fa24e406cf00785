"""Anthropic Messages ingress: request, response and stream translation, checked with the real SDKs."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import anthropic
import anthropic._base_client
import pytest
from anthropic_sdk import sdk_client, sdk_httpx
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from pydantic import TypeAdapter

from gateway.errors import BadRequest, UpstreamUnavailable
from gateway.ingress.anthropic import (
    message_id,
    to_anthropic_response,
    to_openai_request,
)

STREAM_EVENT = TypeAdapter(anthropic.types.RawMessageStreamEvent)
OPENAI_REQUEST = TypeAdapter(CompletionCreateParamsBase)


IMAGE_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="


def base(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-haiku",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    body.update(extra)
    return body


def _drain(value: Any) -> None:
    # pydantic validates Iterable fields lazily (the OpenAI params are full of them): consume
    # every one so a wrong message or content part fails here rather than passing unseen.
    if isinstance(value, dict):
        for item in value.values():
            _drain(item)
    elif not isinstance(value, str | bytes | int | float | bool) and value is not None:
        for item in value:
            _drain(item)


def translate(body: dict[str, Any]) -> dict[str, Any]:
    """Translate and check the result is a request the OpenAI SDK's own types accept."""
    out = to_openai_request(body)
    _drain(OPENAI_REQUEST.validate_python(out))
    return out


# ---------------------------------------------------------------------------------------------
# Request: Anthropic -> OpenAI


def test_minimal_request() -> None:
    assert translate(base()) == {
        "model": "claude-haiku",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 256,
    }


def test_system_string_and_blocks_become_leading_system_message() -> None:
    assert translate(base(system="Be brief."))["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}},
    ]
    messages = translate(base(system=blocks))["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief.\n\nBe kind."}
    assert messages[1]["role"] == "user"
    assert translate(base(system=""))["messages"][0]["role"] == "user"


def test_single_text_block_becomes_plain_string() -> None:
    body = base(messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert translate(body)["messages"] == [{"role": "user", "content": "Hi"}]


def test_text_and_images_become_parts() -> None:
    content = [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    out = translate(base(messages=[{"role": "user", "content": content}]))
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE_B64}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


def tool_conversation() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "two cities", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "is_error": True,
                    "content": [{"type": "text", "text": "service"}, {"type": "text", "text": "down"}],
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]


def test_tool_use_and_tool_result_round() -> None:
    messages = translate(base(messages=tool_conversation()))["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "toolu_2",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
            },
        ],
    }
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    # Tool messages come first, in order, then what is left of the user turn.
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: service\ndown"},
        {"role": "user", "content": "And tomorrow?"},
    ]


def test_assistant_with_only_tool_use_has_null_content() -> None:
    turn = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "now", "input": {}}]}
    body = base(messages=[{"role": "user", "content": "time?"}, turn])
    assistant = translate(body)["messages"][1]
    assert assistant["content"] is None
    assert assistant["tool_calls"][0]["function"] == {"name": "now", "arguments": "{}"}


def test_tool_result_only_turn_has_no_user_message_and_images_move_after_it() -> None:
    only_results = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}
    messages = translate(base(messages=[{"role": "user", "content": "go"}, only_results]))["messages"]
    assert messages[1:] == [{"role": "tool", "tool_call_id": "t1", "content": ""}]

    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/shot.png"}}
    with_image = {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "ok"}, image]}
        ],
    }
    messages = translate(base(messages=[{"role": "user", "content": "go"}, with_image]))["messages"]
    assert messages[1:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://example.com/shot.png"}}],
        },
    ]


WEATHER_TOOL = {
    "name": "weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_tools_translate() -> None:
    out = translate(base(tools=[WEATHER_TOOL, {"name": "now", "input_schema": {"type": "object"}}]))
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        },
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
    ]
    assert "tool_choice" not in out
    assert "parallel_tool_calls" not in out


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    out = translate(base(tools=[WEATHER_TOOL], tool_choice=choice))
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


def test_disable_parallel_tool_use() -> None:
    out = translate(
        base(tools=[WEATHER_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    )
    assert out["parallel_tool_calls"] is False


def test_tool_choice_without_tools_is_dropped() -> None:
    out = translate(base(tool_choice={"type": "any", "disable_parallel_tool_use": True}))
    assert "tool_choice" not in out
    assert "parallel_tool_calls" not in out


def test_sampling_stream_metadata_and_dropped_fields() -> None:
    out = translate(
        base(
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            stop_sequences=["\n\nHuman:"],
            stream=True,
            metadata={"user_id": "u-42"},
            thinking={"type": "enabled", "budget_tokens": 1024},
            service_tier="auto",
        )
    )
    assert out == {
        "model": "claude-haiku",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 256,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\nHuman:"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u-42",
    }
    assert "stream" not in translate(base(stream=False))


def test_input_body_is_not_mutated() -> None:
    body = base(messages=tool_conversation(), tools=[WEATHER_TOOL], system=[{"type": "text", "text": "s"}])
    before = copy.deepcopy(body)
    translate(body)
    assert body == before


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.__setitem__(key, value)


def _content(*blocks: Any, role: str = "user") -> Callable[[dict[str, Any]], None]:
    return lambda body: body["messages"].append({"role": role, "content": list(blocks)})


@pytest.mark.parametrize(
    ("mutate", "param"),
    [
        (_drop("model"), "model"),
        (_set("model", 3), "model"),
        (_drop("max_tokens"), "max_tokens"),
        (_set("max_tokens", 0), "max_tokens"),
        (_set("max_tokens", True), "max_tokens"),
        (_set("max_tokens", "100"), "max_tokens"),
        (_drop("messages"), "messages"),
        (_set("messages", []), "messages"),
        (_set("messages", [{"role": "system", "content": "x"}]), "messages[0].role"),
        (_set("messages", [{"role": "user", "content": 5}]), "messages[0].content"),
        (_set("messages", ["hi"]), "messages[0]"),
        (_content({"type": "document", "source": {}}), "messages[1].content[0].type"),
        (_content({"text": "no type"}), "messages[1].content[0].type"),
        (_content({"type": "text"}), "messages[1].content[0].text"),
        (
            _content({"type": "text", "text": "a"}, {"type": "tool_use", "id": "x", "name": "n"}),
            "messages[1].content[1].type",
        ),
        (
            _content({"type": "image", "source": {"type": "file", "file_id": "f"}}),
            "messages[1].content[0].source.type",
        ),
        (
            _content({"type": "image", "source": {"type": "base64", "data": "x"}}),
            "messages[1].content[0].source.media_type",
        ),
        (_content({"type": "image", "source": {"type": "url"}}), "messages[1].content[0].source.url"),
        (_content({"type": "tool_result", "content": "x"}), "messages[1].content[0].tool_use_id"),
        (
            _content({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}),
            "messages[1].content[0].content[0].type",
        ),
        (
            _content({"type": "image", "source": {"type": "url", "url": "u"}}, role="assistant"),
            "messages[1].content[0].type",
        ),
        (
            _content({"type": "tool_use", "name": "n", "input": {}}, role="assistant"),
            "messages[1].content[0].id",
        ),
        (
            _content({"type": "tool_use", "id": "x", "input": {}}, role="assistant"),
            "messages[1].content[0].name",
        ),
        (
            _content({"type": "tool_use", "id": "x", "name": "n", "input": []}, role="assistant"),
            "messages[1].content[0].input",
        ),
        (_set("system", [{"type": "image"}]), "system[0].type"),
        (_set("system", 7), "system"),
        (_set("tools", [{"type": "web_search_20250305", "name": "web_search"}]), "tools[0].type"),
        (_set("tools", [{"input_schema": {}}]), "tools[0].name"),
        (_set("tools", [{"name": "n"}]), "tools[0].input_schema"),
        (_set("tools", {"name": "n"}), "tools"),
        (_set("tool_choice", {"type": "sometimes"}), "tool_choice.type"),
        (_set("tool_choice", {"type": "tool"}), "tool_choice.name"),
        (_set("temperature", "hot"), "temperature"),
        (_set("stop_sequences", "STOP"), "stop_sequences"),
        (_set("stream", "yes"), "stream"),
        (_set("metadata", "u"), "metadata"),
    ],
)
def test_invalid_requests_name_the_field(mutate: Callable[[dict[str, Any]], None], param: str) -> None:
    body = base()
    mutate(body)
    with pytest.raises(BadRequest) as info:
        to_openai_request(body)
    assert info.value.param == param
    assert info.value.message.startswith(f"{param}: ")
    assert info.value.status == 400


def test_request_sent_by_the_anthropic_sdk_translates() -> None:
    """What the real SDK puts on the wire is what the translator must accept."""
    seen: list[dict[str, Any]] = []

    def handler(request: Any) -> Any:
        seen.append(json.loads(request.content))
        return sdk_httpx.Response(200, json=to_anthropic_response(COMPLETION_TEXT, model="claude-haiku"))

    messages: Any = tool_conversation()
    tools: Any = [WEATHER_TOOL]
    sdk_client(handler).messages.create(
        model="claude-haiku",
        max_tokens=100,
        system="Be brief.",
        messages=messages,
        tools=tools,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
        extra_body={"top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}},
    )
    out = translate(seen[0])
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert out["tool_choice"] == "required"
    assert out["parallel_tool_calls"] is False
    assert out["user"] == "u-1"
    assert out["stop"] == ["END"]


# ---------------------------------------------------------------------------------------------
# Response: OpenAI -> Anthropic

COMPLETION_TEXT: dict[str, Any] = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 9,
        "total_tokens": 1209,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}

COMPLETION_TOOLS: dict[str, Any] = {
    "id": "chatcmpl-tools1",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_paris",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"id": "call_now", "type": "function", "function": {"name": "now", "arguments": ""}},
                    {
                        "id": "call_bad",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": '},
                    },
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 80, "completion_tokens": 40, "total_tokens": 120},
}


def test_openai_fixtures_are_valid() -> None:
    ChatCompletion.model_validate(COMPLETION_TEXT)
    ChatCompletion.model_validate(COMPLETION_TOOLS)


def test_text_response() -> None:
    out = to_anthropic_response(COMPLETION_TEXT, model="claude-haiku")
    assert out == {
        "id": "msg_B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku",
        "content": [{"type": "text", "text": "Hello! How can I help?"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 176,
            "output_tokens": 9,
            "cache_read_input_tokens": 1024,
            "cache_creation_input_tokens": 0,
        },
    }
    message = anthropic.types.Message.model_validate(out)
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) == 1200


def test_tool_response() -> None:
    out = to_anthropic_response(COMPLETION_TOOLS, model="claude-haiku")
    message = anthropic.types.Message.model_validate(out)
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["tool_use", "tool_use", "tool_use"]
    assert out["content"] == [
        {"type": "tool_use", "id": "call_paris", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_now", "name": "now", "input": {}},
        # Broken JSON from the model is kept verbatim rather than silently dropped.
        {"type": "tool_use", "id": "call_bad", "name": "weather", "input": {"_raw_arguments": '{"city": '}},
    ]
    assert out["usage"]["input_tokens"] == 80


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_stop_reasons(finish: str | None, stop: str) -> None:
    body = copy.deepcopy(COMPLETION_TEXT)
    body["choices"][0]["finish_reason"] = finish
    assert to_anthropic_response(body, model="m")["stop_reason"] == stop


def test_tool_calls_with_finish_stop_still_report_tool_use() -> None:
    body = copy.deepcopy(COMPLETION_TOOLS)
    body["choices"][0]["finish_reason"] = "stop"
    assert to_anthropic_response(body, model="m")["stop_reason"] == "tool_use"


def test_refusal_empty_content_missing_usage_and_ids() -> None:
    body: dict[str, Any] = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "refusal": "I can't."}}],
    }
    out = to_anthropic_response(body, model="m")
    assert out["content"] == [{"type": "text", "text": "I can't."}]
    assert out["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    assert out["id"].startswith("msg_") and len(out["id"]) > 10
    empty = to_anthropic_response(
        {"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]}, model="m"
    )
    assert empty["content"] == []
    anthropic.types.Message.model_validate(empty)
    no_id = {"choices": [{"message": {"tool_calls": [{"function": {"name": "now", "arguments": "{}"}}]}}]}
    tool_id = to_anthropic_response(no_id, model="m")["content"][0]["id"]
    assert tool_id.startswith("toolu_")
    assert message_id("chatcmpl-abc") == "msg_abc"
    assert message_id("resp-1") == "msg_resp-1"


def test_only_choice_zero_is_used() -> None:
    body = copy.deepcopy(COMPLETION_TEXT)
    body["choices"].append(
        {"index": 1, "message": {"role": "assistant", "content": "second"}, "finish_reason": "stop"}
    )
    assert to_anthropic_response(body, model="m")["content"] == [
        {"type": "text", "text": "Hello! How can I help?"}
    ]


def test_no_choices_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamUnavailable):
        to_anthropic_response({"id": "x", "choices": []}, model="m")


def test_sdk_reads_the_non_stream_response() -> None:
    def handler(request: Any) -> Any:
        return sdk_httpx.Response(200, json=to_anthropic_response(COMPLETION_TOOLS, model="claude-haiku"))

    message = sdk_client(handler).messages.create(
        model="claude-haiku", max_tokens=100, messages=[{"role": "user", "content": "weather?"}]
    )
    assert isinstance(message, anthropic.types.Message)
    assert message.stop_reason == "tool_use"
    tool_uses = [b for b in message.content if isinstance(b, anthropic.types.ToolUseBlock)]
    assert tool_uses[0].input == {"city": "Paris"}


def test_sdk_round_trip_of_its_own_message() -> None:
    """The SDK's to_param() of a translated answer, sent back, translates to the same tool calls."""
    seen: list[dict[str, Any]] = []

    def handler(request: Any) -> Any:
        seen.append(json.loads(request.content))
        return sdk_httpx.Response(200, json=to_anthropic_response(COMPLETION_TOOLS, model="claude-haiku"))

    client = sdk_client(handler)
    question: Any = {"role": "user", "content": "weather?"}
    first = client.messages.create(model="claude-haiku", max_tokens=100, messages=[question])
    results: Any = {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": block.id, "content": "ok"}
            for block in first.content
            if isinstance(block, anthropic.types.ToolUseBlock)
        ],
    }
    client.messages.create(
        model="claude-haiku", max_tokens=100, messages=[question, first.to_param(), results]
    )
    messages = translate(seen[1])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "tool"]
    assert messages[1]["tool_calls"][0] == {
        "id": "call_paris",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
    }
    assert [m["tool_call_id"] for m in messages[2:]] == ["call_paris", "call_now", "call_bad"]


@pytest.mark.parametrize(
    "message",
    [
        {"role": "robot", "content": "x"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"href": "x"}}]},
        {"role": "tool", "content": "x"},
    ],
)
def test_openai_request_check_rejects_wrong_bodies(message: dict[str, Any]) -> None:
    """The request-side checks lean on the OpenAI SDK's TypedDicts: they must catch a bad body."""
    with pytest.raises(ValueError):
        _drain(OPENAI_REQUEST.validate_python({"model": "m", "messages": [message]}))
