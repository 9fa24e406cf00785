"""The hosted loop's pure parts: the function names tools are offered under, the request's ``mcp`` tool
as parsed, and the events of a listing that failed."""

from __future__ import annotations

import json
import re

import pytest

from gateway.errors import BadRequest
from gateway.hosted.events import Output
from gateway.hosted.items import function_name, list_tools_item
from gateway.hosted.spec import parse_tool
from gateway.ingress.responses import to_chat_request

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def test_function_names_are_valid_chat_names_and_stay_distinct() -> None:
    assert function_name("kit", "count") == "kit__count"
    assert function_name("kit", "files.read/v2") == "kit__files_read_v2"
    long_a, long_b = function_name("kit", "x" * 80 + "a"), function_name("kit", "x" * 80 + "b")
    assert NAME.match(long_a) and NAME.match(long_b) and long_a != long_b
    assert long_a == function_name("kit", "x" * 80 + "a")  # the same tool, the same name, every turn


def test_the_mcp_tool_as_parsed() -> None:
    tool = parse_tool(
        {
            "type": "mcp",
            "server_label": "kit",
            "allowed_tools": {"tool_names": ["count"]},
            "require_approval": {"always": {"tool_names": ["count"]}, "never": {"tool_names": ["echo"]}},
        },
        "tools[0]",
    )
    assert tool.allowed == frozenset({"count"})
    assert (tool.asks_approval("count"), tool.asks_approval("echo"), tool.asks_approval("x")) == (
        True,
        False,
        None,
    )
    never = parse_tool({"type": "mcp", "server_label": "kit", "require_approval": "never"}, "tools[0]")
    assert never.asks_approval("anything") is False


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"type": "mcp"}, "tools[1].server_label"),
        ({"type": "mcp", "server_label": "kit", "authorization": "t"}, "tools[1].authorization"),
        ({"type": "mcp", "server_label": "kit", "connector_id": "c"}, "tools[1].connector_id"),
        ({"type": "mcp", "server_label": "kit", "surprise": 1}, "tools[1].surprise"),
        ({"type": "mcp", "server_label": "kit", "server_url": 5}, "tools[1].server_url"),
        (
            {"type": "mcp", "server_label": "kit", "require_approval": {"maybe": {}}},
            "tools[1].require_approval.maybe",
        ),
        ({"type": "mcp", "server_label": "f"}, "tools[1].server_label"),  # given twice
        ({"type": "web_search"}, "tools[1].type"),
    ],
)
def test_bad_mcp_tools_name_the_field(tool: dict[str, object], param: str) -> None:
    first = {"type": "mcp", "server_label": "f"}
    with pytest.raises(BadRequest) as caught:
        to_chat_request({"model": "m", "input": "hi", "tools": [first, tool]})
    assert caught.value.param == param


def test_mcp_tools_are_not_sent_to_the_model_as_they_are() -> None:
    chat, echo, _ = to_chat_request(
        {
            "model": "m",
            "input": "hi",
            "tools": [
                {"type": "mcp", "server_label": "kit"},
                {"type": "function", "name": "mine", "parameters": {"type": "object"}},
            ],
        }
    )
    assert [t["function"]["name"] for t in chat["tools"]] == ["mine"]
    assert [t["type"] for t in echo.tools] == ["mcp", "function"] and echo.hosted[0].label == "kit"


def test_a_failed_listing_streams_its_failed_event() -> None:
    _, echo, _ = to_chat_request(
        {"model": "m", "input": "hi", "tools": [{"type": "mcp", "server_label": "kit"}]}
    )
    out = Output("resp_1", 1, echo, stream=True)
    item = list_tools_item("kit", [])
    index, frames = out.list_started(item)
    frames += out.list_done(index, {**item, "error": "MCP server 'kit' is unavailable."})
    kinds = [json.loads(f.split(b"data: ", 1)[1])["type"] for f in frames]
    assert kinds == [
        "response.output_item.added",
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.failed",
        "response.output_item.done",
    ]
