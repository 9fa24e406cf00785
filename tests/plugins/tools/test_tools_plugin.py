"""plugins/tools: a tools.yaml registry of HTTP endpoints served as MCP tools, checked with the official MCP
client, directly and through the gateway's /mcp, against a real HTTP endpoint on loopback."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
import yaml
from conftest import GatewayFactory, LiveServer, sha
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from plugins.sdk import PluginSettings
from plugins.tools.app import build
from plugins.tools.call import marker
from plugins.tools.registry import RegistryError, parse

PLUGIN_TOKEN = "tools-plugin-token"
ENDPOINT_SECRET = "orders-api-secret"
KEY = "sk-tools-acme"


class Endpoint:
    """The HTTP API behind the tools: records what it was sent, counts every execution."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.seen: list[dict[str, Any]] = []

        async def order(request: Request) -> Response:
            self.hits["order"] += 1
            self.seen.append(
                {
                    "raw_path": request.scope["raw_path"].decode(),
                    "query": dict(request.query_params),
                    "auth": request.headers.get("authorization"),
                }
            )
            return JSONResponse(self.seen[-1])

        async def create(request: Request) -> Response:
            self.hits["create"] += 1
            return JSONResponse({"created": await request.json()})

        async def slow(request: Request) -> Response:
            self.hits["slow"] += 1
            await asyncio.sleep(3)
            return PlainTextResponse("late")

        async def big(request: Request) -> Response:
            return PlainTextResponse("y" * 5_000_000)

        async def missing(request: Request) -> Response:
            return PlainTextResponse("no such order", status_code=404)

        self.app = Starlette(
            routes=[
                Route("/orders/{order_id:path}", order),
                Route("/orders", create, methods=["POST"]),
                Route("/slow", slow),
                Route("/big", big),
                Route("/missing", missing),
            ]
        )


def registry(base: str) -> str:
    return f"""
tools:
  - name: get_order
    description: Look up an order.
    url: "{base}/orders/{{order_id}}"
    headers: {{Authorization: "Bearer ${{ORDERS_SECRET}}"}}
    input_schema:
      type: object
      properties: {{order_id: {{type: string, minLength: 1}}, expand: {{type: boolean}}}}
      required: [order_id]
      additionalProperties: false
    idempotent: true
  - name: create_order
    method: POST
    url: "{base}/orders"
    input_schema:
      type: object
      properties:
        items: {{type: array, items: {{type: object, properties: {{qty: {{type: integer, minimum: 1}}}}}}}}
      required: [items]
  - {{name: slow, url: "{base}/slow", timeout_s: 0.5, input_schema: {{type: object}}}}
  - {{name: big, url: "{base}/big", max_response_bytes: 65536, input_schema: {{type: object}}}}
  - {{name: missing, url: "{base}/missing", input_schema: {{type: object}}}}
"""


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[Endpoint, LiveServer]]:
    ep = Endpoint()
    server = LiveServer(ep.app, "h11").start()
    yield ep, server
    server.stop()


@pytest.fixture(scope="module")
def plugin(endpoint: tuple[Endpoint, LiveServer]) -> Iterator[LiveServer]:
    tools = parse(yaml.safe_load(registry(endpoint[1].url)), "tools.yaml", {"ORDERS_SECRET": ENDPOINT_SECRET})
    settings = PluginSettings(token=PLUGIN_TOKEN, gateway_url=None, data_dir=None, redis_url=None)
    server = LiveServer(build(settings, tools), "h11").start()
    yield server
    server.stop()


@asynccontextmanager
async def connect(url: str, token: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


async def test_lists_the_registry_as_tools(plugin: LiveServer) -> None:
    async with connect(plugin.url + "/mcp", PLUGIN_TOKEN) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert list(tools) == ["get_order", "create_order", "slow", "big", "missing"]
    get = tools["get_order"]
    assert get.input_schema["required"] == ["order_id"] and get.description == "Look up an order."
    hints = get.annotations
    assert hints is not None and (hints.read_only_hint, hints.idempotent_hint) == (True, True)


async def test_calls_fill_the_template_encoded_and_send_the_configured_headers(
    plugin: LiveServer, endpoint: tuple[Endpoint, LiveServer]
) -> None:
    async with connect(plugin.url + "/mcp", PLUGIN_TOKEN) as client:
        got = await client.call_tool("get_order", {"order_id": "a/b c?d#e", "expand": True})
        made = await client.call_tool("create_order", {"items": [{"qty": 2}]})
    assert not got.is_error
    assert json.loads(text(got)) == {
        "raw_path": "/orders/a%2Fb%20c%3Fd%23e",  # one path segment, whatever the caller put in it
        "query": {"expand": "true"},
        "auth": f"Bearer {ENDPOINT_SECRET}",
    }
    assert json.loads(text(made)) == {"created": {"items": [{"qty": 2}]}}


async def test_arguments_failing_the_schema_are_a_tool_error_naming_the_field(
    plugin: LiveServer, endpoint: tuple[Endpoint, LiveServer]
) -> None:
    ep = endpoint[0]
    before = ep.hits.copy()
    async with connect(plugin.url + "/mcp", PLUGIN_TOKEN) as client:
        missing = await client.call_tool("get_order", {})
        extra = await client.call_tool("get_order", {"order_id": "1", "color": "red"})
        deep = await client.call_tool("create_order", {"items": [{"qty": 1}, {"qty": 0}]})
        wrong_type = await client.call_tool("get_order", {"order_id": 7})
    assert all(r.is_error for r in (missing, extra, deep, wrong_type))
    assert (
        text(missing)
        == "Invalid arguments for 'get_order': arguments.order_id: 'order_id' is a required property"
    )
    assert text(extra).startswith("Invalid arguments for 'get_order': arguments: Additional properties")
    assert text(deep).startswith(
        "Invalid arguments for 'create_order': arguments.items[1].qty: 0 is less than"
    )
    assert (
        text(wrong_type) == "Invalid arguments for 'get_order': arguments.order_id: 7 is not of type 'string'"
    )
    assert ep.hits == before  # nothing was called out


async def test_timeouts_errors_and_large_answers(plugin: LiveServer) -> None:
    async with connect(plugin.url + "/mcp", PLUGIN_TOKEN) as client:
        slow = await client.call_tool("slow", {})
        missing = await client.call_tool("missing", {})
        big = await client.call_tool("big", {})
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("nope", {})
    assert (slow.is_error, text(slow)) == (True, "slow: the endpoint did not answer within 0.5s")
    assert (missing.is_error, text(missing)) == (
        True,
        "missing: the endpoint answered HTTP 404: no such order",
    )
    assert not big.is_error and text(big) == "y" * 65536 + marker(5_000_000 - 65536)
    assert unknown.value.code == types.INVALID_PARAMS


async def test_the_plugin_token_is_required_but_not_for_healthz(plugin: LiveServer) -> None:
    async with httpx.AsyncClient() as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        assert (await http.post(plugin.url + "/mcp", json=body)).status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert (await http.post(plugin.url + "/mcp", json=body, headers=wrong)).status_code == 401
        assert (await http.get(plugin.url + "/healthz")).json() == {"status": "ok"}


async def test_through_the_gateway(
    gateway_factory: GatewayFactory, plugin: LiveServer, endpoint: tuple[Endpoint, LiveServer]
) -> None:
    """The gateway's /mcp in front of the plugin: names prefixed, the plugin token never shown to the caller,
    a schema failure comes back as the tool's error."""
    routes = f"""
providers: {{local: {{type: mock}}}}
models: {{mock-chat: {{provider: local}}}}
mcp_servers:
  orders: {{url: "{plugin.url}/mcp", headers: {{Authorization: "Bearer {PLUGIN_TOKEN}"}}}}
"""
    budgets = f'tenants: {{acme: {{keys: [{{id: k, sha256: "{sha(KEY)}"}}]}}}}\n'
    gw = gateway_factory(routes=routes, budgets=budgets)
    seen: list[str] = []

    async def record(response: httpx2.Response) -> None:
        await response.aread()
        seen.append(json.dumps(dict(response.headers)) + response.text)

    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {KEY}"}, event_hooks={"response": [record]}
        ) as http,
        Client(streamable_http_client(gw.url + "/mcp", http_client=http)) as client,
    ):
        names = [t.name for t in (await client.list_tools()).tools]
        bad = await client.call_tool("orders__get_order", {"order_id": 5})
        good = await client.call_tool("orders__get_order", {"order_id": "42"})
    assert names == [
        "orders__get_order",
        "orders__create_order",
        "orders__slow",
        "orders__big",
        "orders__missing",
    ]
    assert bad.is_error and "arguments.order_id: 5 is not of type 'string'" in text(bad)
    assert not good.is_error and json.loads(text(good))["raw_path"] == "/orders/42"
    assert not [s for s in seen if PLUGIN_TOKEN in s]  # the gateway's credential for the plugin
    # The endpoint's secret appears only in the last answer, where the test endpoint echoes it as its output.
    assert len(seen) >= 3 and not [s for s in seen[:-1] if ENDPOINT_SECRET in s]


def test_registry_errors_name_their_path() -> None:
    bad = """
tools:
  - {name: "has space", url: "ftp://x", method: FETCH, input_schema: {type: string}, color: red}
  - {name: a, url: "http://h/{id}", input_schema: {type: object, properties: {id: {type: string}}}}
  - {name: b, url: "http://h/{0}", input_schema: {type: object}, timeout_s: 0, idempotent: "yes"}
  - {name: c, url: "http://h", input_schema: {type: object, properties: {x: {type: 12}}}}
  - {name: a, url: "http://h", input_schema: {type: object}}
  - {url: "http://h"}
"""
    with pytest.raises(RegistryError) as info:
        parse(yaml.safe_load(bad), "tools.yaml", {})
    assert info.value.errors == [
        "tools.yaml: tools[0]: unknown field 'color'",
        "tools.yaml: tools[0].name: must be 1-64 letters, digits, '_' or '-'",
        "tools.yaml: tools[0].method: must be one of GET, POST, PUT, PATCH, DELETE",
        "tools.yaml: tools[0].url: must be an http:// or https:// URL",
        "tools.yaml: tools[0].input_schema: must be a JSON Schema with type: object"
        " (MCP tool arguments are an object)",
        "tools.yaml: tools[1].url: {id} must be a required property of input_schema",
        "tools.yaml: tools[2].url: placeholders must be {argument_name}, not '0'",
        "tools.yaml: tools[2].idempotent: must be true or false",
        "tools.yaml: tools[2].timeout_s: must be a positive number",
        "tools.yaml: tools[3].input_schema.properties/x/type: invalid JSON Schema: 12 is not valid under any"
        " of the given schemas",
        "tools.yaml: tools[5].name: is required",
        "tools.yaml: tools[5].input_schema: is required",
    ]
    with pytest.raises(RegistryError):
        parse({"tool": []}, "tools.yaml", {})


def test_the_shipped_registry_loads(tmp_path: Path) -> None:
    from plugins.tools.registry import load

    tools = load(Path("plugins/tools/tools.yaml"), {"GATEWAY_URL": "http://gw:1"})
    assert [(t.name, t.url) for t in tools] == [("gateway_health", "http://gw:1/readyz")]
