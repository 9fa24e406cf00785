"""Chat messages are checked as OpenAI checks them: required fields per role, types, content parts,
assistant tool calls; with OpenAI's codes and ``param`` paths. Unknown fields still pass through."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from conftest import KEY_ACME, ROUTES, GatewayFactory
from upstreams import FakeOpenAI

from gateway.errors import BadRequest
from gateway.pipeline.parse import parse
from gateway.providers.base import Operation

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
USER = {"role": "user", "content": "hi"}


def check(*messages: Any) -> BadRequest | None:
    try:
        parse(Operation.CHAT, {"model": "m", "messages": list(messages)}, {})
    except BadRequest as exc:
        return exc
    return None


@pytest.mark.parametrize(
    ("messages", "param", "code", "text"),
    [
        ([], "messages", "empty_array", "Invalid 'messages': empty array."),
        ([USER, {"role": "user"}], "messages[1].content", "missing_required_parameter", None),
        ([{"content": "hi"}], "messages[0].role", "missing_required_parameter", None),
        (
            [{"role": "bot", "content": "hi"}],
            "messages[0].role",
            "invalid_value",
            "Invalid value: 'bot'. Supported values are: 'system', 'assistant', 'user', 'function', "
            "'tool', and 'developer'.",
        ),
        ([{"role": ["user"], "content": "hi"}], "messages[0].role", "invalid_value", None),
        (["hi"], "messages[0]", "invalid_type", "expected an object, but got a string instead."),
        ([{"role": "system"}], "messages[0].content", "missing_required_parameter", None),
        ([{"role": "developer", "content": None}], "messages[0].content", "missing_required_parameter", None),
        ([USER, {"role": "assistant"}], "messages[1].content", "missing_required_parameter", None),
        (
            [{"role": "user", "content": 5}],
            "messages[0].content",
            "invalid_type",
            "Invalid type for 'messages[0].content': expected one of a string or array of objects, but got "
            "an integer instead.",
        ),
        ([{"role": "user", "content": []}], "messages[0].content", "empty_array", None),
        (
            [{"role": "user", "content": [{"text": "x"}]}],
            "messages[0].content[0].type",
            "missing_required_parameter",
            None,
        ),
        (
            [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content[0].type",
            "invalid_value",
            "Supported values are: 'text'.",
        ),
        (
            [{"role": "user", "content": [{"type": "text"}]}],
            "messages[0].content[0].text",
            "missing_required_parameter",
            None,
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": 1}]}],
            "messages[0].content[0].text",
            "invalid_type",
            None,
        ),
        (
            [{"role": "user", "content": [{"type": "image_url"}]}],
            "messages[0].content[0].image_url",
            "missing_required_parameter",
            None,
        ),
        (
            [USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "1"}],
            "messages[2].tool_call_id",
            "missing_required_parameter",
            None,
        ),
        ([{"role": "function", "content": "1"}], "messages[0].name", "missing_required_parameter", None),
        ([USER, {"role": "assistant", "tool_calls": {}}], "messages[1].tool_calls", "invalid_type", None),
        (
            [USER, {"role": "assistant", "tool_calls": [{"type": "function"}]}],
            "messages[1].tool_calls[0].id",
            "missing_required_parameter",
            None,
        ),
        (
            [USER, {"role": "assistant", "content": "x", "tool_calls": [{**CALL, "type": "shell"}]}],
            "messages[1].tool_calls[0].type",
            "invalid_value",
            None,
        ),
        (
            [USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f"}}]}],
            "messages[1].tool_calls[0].function.arguments",
            "missing_required_parameter",
            None,
        ),
        (
            [
                USER,
                {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}]},
            ],
            "messages[1].tool_calls[0].function.arguments",
            "invalid_type",
            None,
        ),
    ],
)
def test_invalid_messages_get_openais_400(
    messages: list[Any], param: str, code: str, text: str | None
) -> None:
    err = check(*messages)
    assert err is not None, messages
    assert (err.status, err.param, err.code) == (400, param, code), err.message
    if text is not None:
        assert text in err.message, err.message
    if code == "missing_required_parameter":
        assert err.message == f"Missing required parameter: '{param}'."


def test_valid_messages_of_every_role_pass_with_their_unknown_fields() -> None:
    assert (
        check(
            {"role": "developer", "content": "be brief"},
            {"role": "system", "content": [{"type": "text", "text": "x"}], "cache_control": {}},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                ],
                "name": "ann",
                "x_vendor": 1,
            },
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "assistant", "refusal": "no"},
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "function", "name": "f", "content": "1"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c", "type": "custom", "custom": {"name": "g", "input": "x"}}],
            },
            USER,
        )
        is None
    )


def test_a_message_without_content_is_400_through_the_gateway(gateway_factory: GatewayFactory) -> None:
    """The issue's case: ``{"role": "user"}`` got 200. Now a 400 naming the field, upstream never called."""
    upstream = FakeOpenAI()
    gw = gateway_factory(routes=ROUTES, transport=upstream.transport)
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="gpt-4o-mini", messages=[USER, {"role": "user"}])  # type: ignore[list-item,typeddict-item]
    assert info.value.param == "messages[1].content"
    assert info.value.code == "missing_required_parameter"
    raw = httpx.post(
        gw.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {KEY_ACME}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "tool", "content": "1"}]},
    )
    assert raw.status_code == 400
    assert raw.json()["error"]["param"] == "messages[0].tool_call_id"
    assert upstream.requests == []
