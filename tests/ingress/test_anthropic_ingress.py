"""Anthropic Messages ingress: request, response and stream translation, checked with the real SDKs."""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Callable
from typing import Any

import anthropic
import anthropic._base_client
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from pydantic import TypeAdapter

from gateway.errors import BadRequest, UpstreamUnavailable
from gateway.ingress.anthropic import (
    StreamTranslator,
    message_id,
    to_anthropic_response,
    to_openai_request,
)
from gateway.sse import SSEParser

STREAM_EVENT = TypeAdapter(anthropic.types.RawMessageStreamEvent)
OPENAI_REQUEST = TypeAdapter(CompletionCreateParamsBase)

# anthropic 2.x runs on the httpx2 fork and rejects httpx objects; 0.x runs on httpx. Serve the
# SDK through the MockTransport of whichever it was built on.
sdk_httpx: Any = importlib.import_module("httpx2" if hasattr(anthropic._base_client, "httpx2") else "httpx")

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


def sdk_client(handler: Callable[[Any], Any]) -> anthropic.Anthropic:
    http_client = sdk_httpx.Client(transport=sdk_httpx.MockTransport(handler))
    return anthropic.Anthropic(
        base_url="http://gateway.test", api_key="x", http_client=http_client, max_retries=0
    )


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
