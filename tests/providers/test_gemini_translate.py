"""The pure Gemini translation: JSON Schema subset, request shapes the wire tests do not reach, answers,
stream events and error bodies as the Gemini API reference documents them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import BadRequest, UpstreamStatusError, UpstreamUnavailable
from gateway.providers.gemini_response import (
    StreamTranslator,
    error_from_response,
    to_openai_response,
    usage_from_gemini,
)
from gateway.providers.gemini_schema import to_gemini_schema
from gateway.providers.gemini_translate import to_gemini_request
from gateway.sse import Event

# --- schema -----------------------------------------------------------------------------------------


def test_refs_are_inlined_and_nullables_folded() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {"Day": {"type": "string", "enum": ["mon", "tue"]}},
        "properties": {
            "day": {"$ref": "#/$defs/Day", "description": "which day"},
            "note": {"type": ["string", "null"], "format": "email"},
            "rain": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            "kind": {"const": "forecast"},
            "level": {"enum": [1, 2, 3]},
            "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        },
        "additionalProperties": False,
        "required": ["day", "ghost"],
    }
    assert to_gemini_schema(schema, "s") == {
        "type": "OBJECT",
        "properties": {
            "day": {"type": "STRING", "enum": ["mon", "tue"], "description": "which day"},
            "note": {"type": "STRING", "nullable": True},  # "email" is no Gemini format
            "rain": {"type": "NUMBER", "nullable": True},
            "kind": {"type": "STRING", "enum": ["forecast"]},
            "level": {"description": "One of: 1, 2, 3."},
            "either": {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]},
        },
        "required": ["day"],
    }


def test_recursive_and_dangling_refs_are_clear_400s() -> None:
    tree = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            }
        },
        "$ref": "#/$defs/Node",
    }
    with pytest.raises(BadRequest, match="recursive"):
        to_gemini_schema(tree, "response_format.json_schema.schema")
    with pytest.raises(BadRequest, match="does not name"):
        to_gemini_schema({"$ref": "#/$defs/Nope"}, "p")


def test_type_lists_of_several_types_become_any_of() -> None:
    assert to_gemini_schema({"type": ["string", "integer", "null"]}, "p") == {
        "anyOf": [{"type": "STRING"}, {"type": "INTEGER"}],
        "nullable": True,
    }


# --- requests ---------------------------------------------------------------------------------------


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Hi"}], **fields}


def test_system_developer_and_turn_merging() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "A."},
            {"role": "user", "content": "one"},
            {"role": "developer", "content": [{"type": "text", "text": "B."}]},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "assistant", "content": ""},
        ]
    )
    out = to_gemini_request(body)
    assert out["systemInstruction"] == {"parts": [{"text": "A."}, {"text": "B."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "ok"}]},
    ]


def test_files_audio_and_gemini_knobs() -> None:
    content = [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ]
    out = to_gemini_request(
        chat(
            messages=[{"role": "user", "content": content}],
            top_k=40,
            safety_settings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            thinking_config={"thinkingBudget": 0},
            frequency_penalty=0.5,
        )
    )
    assert out["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
    ]
    assert out["generationConfig"] == {
        "frequencyPenalty": 0.5,
        "topK": 40,
        "thinkingConfig": {"thinkingBudget": 0},
    }
    assert out["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]


def test_tools_without_parameters_and_tool_choice_modes() -> None:
    tool = {"type": "function", "function": {"name": "now"}}
    assert to_gemini_request(chat(tools=[tool]))["tools"] == [{"functionDeclarations": [{"name": "now"}]}]
    for choice, mode in (("auto", "AUTO"), ("required", "ANY"), ("none", "NONE")):
        out = to_gemini_request(chat(tools=[tool], tool_choice=choice))
        assert out["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"stop": ["a", "b", "c", "d", "e", "f"]}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ],
)
def test_untranslatable_requests_name_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        to_gemini_request(chat(**fields))
    assert caught.value.param == param


def test_thought_signatures_from_either_openai_endpoint_convention() -> None:
    def call(extra: dict[str, Any]) -> dict[str, Any]:
        fn = {"name": "f", "arguments": "{}"}
        return {"id": "c1", "type": "function", "function": fn, "extra_content": extra}

    for key in ("google", "vertex"):
        history = [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "tool_calls": [call({key: {"thought_signature": "c2ln"}})]},
        ]
        out = to_gemini_request(chat(messages=history))
        assert out["contents"][1]["parts"] == [
            {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2ln"}
        ]


# --- answers ----------------------------------------------------------------------------------------


def test_thoughts_are_left_out_and_call_ids_are_stable_and_distinct() -> None:
    calls = [
        {"functionCall": {"name": "f", "args": {"x": 1}}},
        {"functionCall": {"name": "f", "args": {"x": 1}}},
    ]
    data = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"text": "plan…", "thought": True}, {"text": "Hi"}, *calls],
                },
                "finishReason": "STOP",
            }
        ],
        "responseId": "r1",
    }
    first, _ = to_openai_response(data, model="m")
    again, _ = to_openai_response(data, model="m")
    message = first["choices"][0]["message"]
    assert message["content"] == "Hi" and first["choices"][0]["finish_reason"] == "tool_calls"
    ids = [c["id"] for c in message["tool_calls"]]
    assert len(set(ids)) == 2 and ids == [c["id"] for c in again["choices"][0]["message"]["tool_calls"]]
    given = {
        "candidates": [{"content": {"parts": [{"functionCall": {"id": "fc-9", "name": "f", "args": {}}}]}}]
    }
    assert to_openai_response(given, model="m")[0]["choices"][0]["message"]["tool_calls"][0]["id"] == "fc-9"


def test_a_blocked_prompt_is_an_empty_filtered_answer_and_no_candidates_is_a_502() -> None:
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}}
    answer, usage = to_openai_response(blocked, model="m")
    assert answer["choices"][0]["finish_reason"] == "content_filter"
    assert answer["choices"][0]["message"]["content"] is None and usage.prompt_tokens == 5
    with pytest.raises(UpstreamUnavailable):
        to_openai_response({"usageMetadata": {}}, model="m")


def test_usage_counts_tool_prompts_as_input_and_flags_malformed_counts() -> None:
    usage = usage_from_gemini(
        {"promptTokenCount": 10, "toolUsePromptTokenCount": 3, "candidatesTokenCount": 2}
    )
    assert (usage.prompt_tokens, usage.completion_tokens, usage.malformed) == (13, 2, False)
    assert usage_from_gemini({"promptTokenCount": "ten"}).malformed


# --- streams ----------------------------------------------------------------------------------------


def frames_of(translator: StreamTranslator, *events: Any) -> list[dict[str, Any]]:
    out: list[bytes] = []
    for event in events:
        out += translator.feed(Event(None, orjson.dumps(event)))
    return [orjson.loads(f.removeprefix(b"data: ")) for f in out]


def test_usage_arriving_after_the_finish_reason_is_kept() -> None:
    translator = StreamTranslator(model="m", created=1)
    chunks = frames_of(
        translator,
        {
            "candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finishReason": "MAX_TOKENS"}],
            "responseId": "r",
        },
        {"usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1}},
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert translator.done and translator.usage is not None and translator.usage.prompt_tokens == 4
    assert translator.usage_frame is not None and b'"choices":[]' in translator.usage_frame


def test_a_cut_stream_reports_no_usage_so_the_gateway_counts_what_was_sent() -> None:
    translator = StreamTranslator(model="m", created=1)
    partial = {"promptTokenCount": 21, "totalTokenCount": 21}  # what Gemini puts on every event
    frames_of(
        translator, {"candidates": [{"content": {"parts": [{"text": "Hi"}]}}], "usageMetadata": partial}
    )
    assert not translator.done and translator.usage is None and translator.usage_frame is None


def test_stream_errors_and_blocked_prompts() -> None:
    translator = StreamTranslator(model="m", created=1)
    chunks = frames_of(translator, [{"promptFeedback": {"blockReason": "OTHER"}}])  # array-wrapped
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter" and translator.done
    with pytest.raises(UpstreamStatusError) as caught:
        frames_of(
            StreamTranslator(model="m", created=1),
            {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}},
        )
    assert (caught.value.status, caught.value.code) == (429, "RESOURCE_EXHAUSTED")
    with pytest.raises(UpstreamUnavailable):
        StreamTranslator(model="m", created=1).feed(Event(None, b'{"candidates": [{"content"'))


# --- errors -----------------------------------------------------------------------------------------


def test_error_bodies() -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}
    body = orjson.dumps(
        [{"error": {"code": 429, "message": "Quota", "status": "RESOURCE_EXHAUSTED", "details": [retry]}}]
    )
    err = error_from_response(429, body, {})
    assert (err.status, err.message, err.retry_after, err.type) == (429, "Quota", "1.5", "rate_limit_error")
    assert error_from_response(429, body, {"Retry-After": "9"}).retry_after == "9"  # the header wins
    long = orjson.dumps(
        {
            "error": {
                "code": 400,
                "message": "The input token count (1200000) exceeds the maximum number of tokens allowed "
                "(1048576).",
                "status": "INVALID_ARGUMENT",
            }
        }
    )
    assert error_from_response(400, long, {}).code == "context_length_exceeded"
    html = error_from_response(502, b"<html>Bad Gateway</html>", {})
    assert (html.status, html.message) == (502, "<html>Bad Gateway</html>")
