"""OpenAI ↔ Bedrock Converse translation, pure: request shapes, answers, stream events, errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import BadRequest, UpstreamUnavailable
from gateway.providers.base import Usage
from gateway.providers.bedrock_response import (
    StreamTranslator,
    error_from_response,
    exception_error,
    finish_reason,
    to_openai_response,
)
from gateway.providers.bedrock_translate import (
    JSON_OBJECT_INSTRUCTION,
    JSON_SCHEMA_INSTRUCTION,
    to_converse_request,
)

PNG = "iVBORw0KGgo="


def converse(**fields: Any) -> dict[str, Any]:
    return to_converse_request({"model": "m", **fields})


def test_roles_merge_and_system_collects() -> None:
    body = converse(
        messages=[
            {"role": "system", "content": "A."},
            {"role": "user", "content": "one"},
            {"role": "developer", "content": [{"type": "text", "text": "B."}]},
            {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": ""}]},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        ]
    )
    assert body == {
        "messages": [
            {"role": "user", "content": [{"text": "one"}, {"text": "two"}]},
            {"role": "assistant", "content": [{"text": "no"}]},
        ],
        "system": [{"text": "A."}, {"text": "B."}],
    }


def test_parallel_tool_results_share_one_user_turn() -> None:
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "" if i else '{"a": 1}'}}
        for i in range(2)
    ]
    body = converse(
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c0", "content": "r0"},
            {"role": "tool", "tool_call_id": "c1", "content": ""},
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice="none",
    )
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"toolUse": {"toolUseId": "c0", "name": "f", "input": {"a": 1}}},
                {"toolUse": {"toolUseId": "c1", "name": "f", "input": {}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "c0", "content": [{"text": "r0"}]}},
                {"toolResult": {"toolUseId": "c1", "content": [{"text": ""}]}},
            ],
        },
    ]
    # tool_choice none: Converse has no such choice, and tool blocks need a toolConfig: tools kept, no choice
    empty = {"type": "object", "properties": {}}
    assert body["toolConfig"] == {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": empty}}}]}
    fresh = converse(
        messages=[{"role": "user", "content": "go"}],
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice="none",
    )
    assert "toolConfig" not in fresh


def test_cache_breakpoints_become_cache_points() -> None:
    """``cache_control`` on a part (Anthropic's breakpoint, sent through the OpenAI SDK's extra fields)
    is a ``cachePoint`` block right after it, in the system prompt and in turns, not in tool results."""
    mark = {"cache_control": {"type": "ephemeral"}}
    body = converse(
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "Long rules.", **mark}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Long document.", **mark},
                    {"type": "text", "text": "Q?"},
                ],
            },
            {"role": "assistant", "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t", "content": [{"type": "text", "text": "r", **mark}]},
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
    )
    point = {"cachePoint": {"type": "default"}}
    assert body["system"] == [{"text": "Long rules."}, point]
    assert body["messages"][0]["content"] == [{"text": "Long document."}, point, {"text": "Q?"}]
    assert body["messages"][2]["content"] == [{"toolResult": {"toolUseId": "t", "content": [{"text": "r"}]}}]


def test_inference_config_and_dropped_fields() -> None:
    body = converse(
        messages=[{"role": "user", "content": "x"}],
        max_completion_tokens=9,
        max_tokens=100,
        temperature=1.7,
        top_p=0.5,
        stop="###",
        seed=1,
        logprobs=True,
        presence_penalty=0.3,
        user="u1",
    )
    assert body["inferenceConfig"] == {
        "maxTokens": 9,
        "temperature": 1,
        "topP": 0.5,
        "stopSequences": ["###"],
    }
    assert set(body) == {"messages", "inferenceConfig"}
    thinking = {"type": "enabled", "budget_tokens": 1024}
    claude = converse(messages=[{"role": "user", "content": "x"}], top_k=40, thinking=thinking)
    assert claude["additionalModelRequestFields"] == {"top_k": 40, "thinking": thinking}


def test_images_and_documents_go_inline() -> None:
    body = converse(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/webp;base64,{PNG}"}},
                    {
                        "type": "file",
                        "file": {
                            "filename": "Q3 report: final.pdf",
                            "file_data": f"data:application/pdf;base64,{PNG}",
                        },
                    },
                    {"type": "file", "file": {"file_data": f"data:text/csv;base64,{PNG}"}},
                ],
            }
        ]
    )
    assert body["messages"][0]["content"] == [
        {"image": {"format": "webp", "source": {"bytes": PNG}}},
        {"document": {"format": "pdf", "name": "Q3 report final", "source": {"bytes": PNG}}},
        {"document": {"format": "csv", "name": "document 3", "source": {"bytes": PNG}}},
    ]


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}, "send a base64 data: URL"),
        (
            {"type": "image_url", "image_url": {"url": f"data:image/bmp;base64,{PNG}"}},
            "'image/bmp' is not supported",
        ),
        ({"type": "image_url", "image_url": {"url": "data:image/png,raw"}}, "data URLs must look like"),
        ({"type": "file", "file": {"file_id": "file-123"}}, "as a base64 data: URL"),
        ({"type": "input_audio", "input_audio": {}}, "'input_audio' is not supported"),
    ],
)
def test_untranslatable_parts_are_400s_naming_the_path(part: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        converse(messages=[{"role": "user", "content": [part]}])
    assert message in info.value.message
    assert info.value.param is not None and info.value.param.startswith("messages[0].content[0]")


def test_request_errors() -> None:
    with pytest.raises(BadRequest, match="only n=1"):
        converse(messages=[{"role": "user", "content": "x"}], n=2)
    with pytest.raises(BadRequest, match="messages: must be a non-empty array"):
        converse(messages=[])
    with pytest.raises(BadRequest, match=r"tool_calls\[0\].function.arguments: is not valid JSON"):
        converse(
            messages=[
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}],
                }
            ]
        )
    with pytest.raises(BadRequest, match="tool_choice"):
        converse(
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice="sometimes",
        )


def test_json_output_forms() -> None:
    plain = converse(messages=[{"role": "user", "content": "x"}], response_format={"type": "json_object"})
    assert plain["system"] == [{"text": JSON_OBJECT_INSTRUCTION}] and "toolConfig" not in plain
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    forced = converse(messages=[{"role": "user", "content": "x"}], response_format=fmt)
    assert forced["toolConfig"]["toolChoice"] == {"tool": {"name": "json_response"}}
    assert "system" not in forced
    # with the client's own tools, the tool channel is theirs: the schema is asked for in words
    tools = [{"type": "function", "function": {"name": "f"}}]
    asked = converse(messages=[{"role": "user", "content": "x"}], response_format=fmt, tools=tools)
    assert asked["system"] == [{"text": JSON_SCHEMA_INSTRUCTION + orjson.dumps(schema).decode()}]
    assert [t["toolSpec"]["name"] for t in asked["toolConfig"]["tools"]] == ["f"]
    array = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}
    assert "toolConfig" not in converse(messages=[{"role": "user", "content": "x"}], response_format=array)


# --- answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("malformed_model_output", "stop"),
        (None, "stop"),
    ],
)
def test_stop_reasons(stop: Any, finish: str) -> None:
    assert finish_reason(stop) == finish


def test_answer_skips_reasoning_and_reads_cache_usage() -> None:
    answer = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "s"}}},
                    {"text": "4"},
                ],
            }
        },
        "stopReason": "end_turn",
        "usage": {"inputTokens": 5, "outputTokens": 1, "totalTokens": 16, "cacheReadInputTokens": 10},
    }
    completion, usage = to_openai_response(answer, model="m", created=1)
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "4", "refusal": None}
    assert usage == Usage(prompt_tokens=15, completion_tokens=1, cached_tokens=10)
    assert completion["usage"]["prompt_tokens_details"] == {"cached_tokens": 10}
    weird = {**answer, "usage": {"inputTokens": "many", "outputTokens": 1}}
    assert to_openai_response(weird, model="m")[1].malformed
    with pytest.raises(UpstreamUnavailable):
        to_openai_response({"output": {}}, model="m")


def test_stream_translator_needs_message_start_and_ignores_the_unknown() -> None:
    translator = StreamTranslator(model="m", created=1)
    with pytest.raises(UpstreamUnavailable, match="no messageStart"):
        translator.feed("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}})
    translator.feed("messageStart", {"role": "assistant"})
    assert translator.feed("someFutureEvent", {}) == []
    assert (
        translator.feed(
            "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "r"}}}
        )
        == []
    )
    [frame] = translator.feed("messageStop", {"stopReason": "guardrail_intervened"})
    assert orjson.loads(frame[len("data: ") :])["choices"][0]["finish_reason"] == "content_filter"
    assert translator.finished and not translator.done
    translator.feed("metadata", {"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}})
    assert translator.done and translator.usage == Usage(prompt_tokens=1, completion_tokens=2)


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "header", "body", "expected"),
    [
        (
            429,
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            b'{"message":"slow"}',
            (429, "rate_limit_error", "ThrottlingException", "slow"),
        ),
        (
            400,
            "",
            b'{"__type":"com.amazon.coral.validate#ValidationException","Message":"bad"}',
            (400, "invalid_request_error", "ValidationException", "bad"),
        ),
        (
            403,
            "AccessDeniedException",
            b'{"message":"denied"}',
            (403, "permission_error", "AccessDeniedException", "denied"),
        ),
        (
            424,
            "ModelErrorException",
            b'{"message":"model failed"}',
            (502, "server_error", "ModelErrorException", "model failed"),
        ),
        (502, "", b"<html>bad gateway</html>", (502, "server_error", None, "<html>bad gateway</html>")),
        (
            418,
            "SomethingNewException",
            b"",
            (418, "invalid_request_error", "SomethingNewException", "upstream answered HTTP 418"),
        ),
    ],
)
def test_http_errors(status: int, header: str, body: bytes, expected: tuple[Any, ...]) -> None:
    headers = {"x-amzn-errortype": header} if header else {}
    err = error_from_response(status, body, headers)
    assert (err.status, err.type, err.code, err.message) == expected


def test_stream_exception_names_map_like_http_ones() -> None:
    assert exception_error("modelStreamErrorException", "m").status == 502
    assert exception_error("serviceUnavailableException", "m").status == 503
    assert exception_error("internalServerException", "m").status == 500
    assert (
        exception_error("validationException", "prompt is too long: 201000 tokens").code
        == "context_length_exceeded"
    )
    assert exception_error("throttlingException", "m").retryable
