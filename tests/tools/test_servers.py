"""gateway.tools.servers against a real MCP server on loopback (tests/mcp_servers.py): listing, calls,
each failure's outcome, the result bound and the configured headers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import mcp_types as types
import orjson
import pytest
from conftest import free_port
from mcp_servers import ToolServer

from gateway.config.model import McpServerConfig
from gateway.tools.errors import ToolServerTimeout, ToolServerUnavailable
from gateway.tools.servers import McpServers, ServerClient, bound, marker

TOKEN = "upstream-token-for-tests"


@pytest.fixture(scope="module")
def server() -> Iterator[ToolServer]:
    with ToolServer(token=TOKEN) as s:
        yield s


def client(url: str, **kw: object) -> ServerClient:
    fields: dict[str, object] = {"headers": {"Authorization": f"Bearer {TOKEN}"}, "timeout_s": 2.0, **kw}
    return ServerClient(McpServerConfig(name="t", url=url, **fields))  # type: ignore[arg-type]


async def test_list_is_cached_for_the_ttl(server: ToolServer) -> None:
    c = client(server.url)
    before = server.list_calls
    tools = await c.list_tools()
    assert [t.name for t in tools] == list(server.tool_names)
    assert await c.list_tools() == tools
    assert server.list_calls == before + 1  # the second came from the cache
    await c.list_tools(refresh=True)
    assert server.list_calls == before + 2
    await c.aclose()


async def test_call_runs_once_and_sends_the_configured_headers(server: ToolServer) -> None:
    c = client(server.url, headers={"Authorization": f"Bearer {TOKEN}", "X-Org": "acme"})
    result = await c.call_tool("count", {"key": "servers-once"})
    assert (result.outcome, result.text, result.is_error) == ("ok", "1", False)
    assert server.counts["servers-once"] == 1
    seen = orjson.loads((await c.call_tool("headers", {})).text)
    assert (seen["authorization"], seen["x-org"]) == (f"Bearer {TOKEN}", "acme")
    await c.aclose()


async def test_a_header_mismatch_is_resent_the_sdks_way_and_runs_once(server: ToolServer) -> None:
    """A 2026 server refuses a call whose x-mcp-header arguments came without their headers before running it;
    the client then lists the tool and resends once, with the header."""
    c = client(server.url)
    before = server.calls["region"]
    result = await c.call_tool("region", {"region": "eu-west"})
    assert (result.outcome, result.text) == ("ok", "eu-west")
    assert server.calls["region"] == before + 1
    await c.aclose()


async def test_failures_become_error_results(server: ToolServer) -> None:
    c = client(server.url, timeout_s=0.5)
    fail = await c.call_tool("fail", {"message": "no such customer"})
    assert (fail.outcome, fail.is_error, fail.text) == ("tool_error", True, "no such customer")
    boom = await c.call_tool("explode", {})
    assert (boom.outcome, boom.is_error) == ("error", True)
    assert boom.text.startswith("MCP server 't' answered an error: ")
    slow = await c.call_tool("slow", {"seconds": 3})
    assert (slow.outcome, slow.is_error) == ("timeout", True)
    assert slow.text == "MCP server 't' did not answer the call of 'slow' within 0.5s."
    assert (await c.call_tool("echo", {"text": "still fine"})).text == "still fine"
    await c.aclose()


async def test_unreachable_and_refused_servers() -> None:
    dead = client(f"http://127.0.0.1:{free_port()}/mcp")
    result = await dead.call_tool("echo", {"text": "x"})
    assert (result.outcome, result.text) == ("unreachable", "MCP server 't' is unavailable.")
    with pytest.raises(ToolServerUnavailable) as info:
        await dead.list_tools()
    assert (info.value.status, info.value.code) == (502, "mcp_server_unavailable")
    await dead.aclose()


async def test_wrong_credentials_are_unavailable_not_a_tool_error(server: ToolServer) -> None:
    wrong = client(server.url, headers={"Authorization": "Bearer wrong"})
    result = await wrong.call_tool("echo", {"text": "x"})
    assert (result.outcome, result.text) == ("unreachable", "MCP server 't' is unavailable.")
    with pytest.raises(ToolServerUnavailable):
        await wrong.list_tools()
    # A failed listing is remembered briefly: the next one fails at once, without asking the server.
    asked = server.requests
    with pytest.raises(ToolServerUnavailable):
        await wrong.list_tools()
    assert server.requests == asked
    with pytest.raises(ToolServerUnavailable):
        await wrong.list_tools(refresh=True)  # an explicit refresh asks again
    assert server.requests > asked
    await wrong.aclose()


async def test_listing_timeout() -> None:
    with ToolServer(tools=["echo"]) as s:
        c = client(s.url, timeout_s=1e-4)
        with pytest.raises(ToolServerTimeout) as info:
            await c.list_tools()
        assert (info.value.status, info.value.code) == (504, "mcp_server_timeout")
        await c.aclose()


async def test_five_megabytes_are_cut_with_the_marker(server: ToolServer) -> None:
    c = client(server.url, max_result_bytes=64 * 1024)
    result = await c.call_tool("big", {})
    assert result.outcome == "ok" and result.truncated_bytes > 4_900_000
    assert result.text.endswith(marker(result.truncated_bytes))
    assert len(result.text.encode()) <= 64 * 1024
    print(f"\n5 MB result cut to {len(result.text.encode())} bytes, {result.truncated_bytes} over")
    await c.aclose()


def test_bound_keeps_small_results_and_replaces_blocks_that_do_not_fit() -> None:
    small = types.CallToolResult(content=[types.TextContent(type="text", text="hi")])
    assert bound(small, 1024) == (small, 0)
    image = types.ImageContent(type="image", data="A" * 5000, mime_type="image/png")
    mixed = types.CallToolResult(
        content=[types.TextContent(type="text", text="a" * 500), image], structured_content={"k": "v" * 3000}
    )
    cut, over = bound(mixed, 1024)
    assert over > 0 and cut.structured_content is None
    assert [b.type for b in cut.content] == ["text", "text"]
    assert cut.content[0] == mixed.content[0]
    assert isinstance(cut.content[1], types.TextContent) and cut.content[1].text == marker(over)


async def test_a_changed_server_config_gets_a_new_client() -> None:
    servers = McpServers()
    a = McpServerConfig(name="t", url="http://127.0.0.1:1/mcp")
    first = servers.client(a)
    assert servers.client(McpServerConfig(name="t", url="http://127.0.0.1:1/mcp")) is first
    second = servers.client(McpServerConfig(name="t", url="http://127.0.0.1:2/mcp", timeout_s=0.01))
    assert second is not first and servers.client(second.config) is second
    third = servers.client(McpServerConfig(name="t", url="http://127.0.0.1:3/mcp"))
    for _ in range(100):  # the replaced one is closed after its timeout; bounded wait
        if second._http.is_closed:
            break
        await asyncio.sleep(0.05)
    assert second._http.is_closed and not third._http.is_closed
    await servers.aclose()
    assert first._http.is_closed and third._http.is_closed
