"""``/mcp`` end to end: the official MCP SDK's client lists and calls tools through a live gateway (uvicorn on
loopback) in front of real MCP servers on loopback (tests/mcp_servers.py), with the gateway's keys."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import orjson
import pytest
from conftest import GatewayFactory, LiveServer, free_port, sha
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_servers import ToolServer
from sqlalchemy import create_engine, select

from gateway import delegation
from gateway.app import create_app
from gateway.ledger.schema import audit
from gateway.settings import Settings
from gateway.tools.aggregate import NOT_ALLOWED
from gateway.tools.servers import marker

CRM_TOKEN = "crm-upstream-secret-token"
KEYS = {
    "acme-user": "sk-mcp-acme-user",
    "acme-admin": "sk-mcp-acme-admin",
    "acme-rev": "sk-mcp-acme-reviewer",
    "globex-user": "sk-mcp-globex-user",
}
BUDGETS = f"""
tenants:
  acme:
    keys:
      - {{id: acme-user, sha256: "{sha(KEYS["acme-user"])}", role: user}}
      - {{id: acme-admin, sha256: "{sha(KEYS["acme-admin"])}", role: admin}}
      - {{id: acme-rev, sha256: "{sha(KEYS["acme-rev"])}", role: reviewer}}
  globex:
    keys:
      - {{id: globex-user, sha256: "{sha(KEYS["globex-user"])}", role: user}}
"""


def routes(crm: str, web: str, dead: str) -> str:
    return f"""
providers: {{local: {{type: mock}}}}
models: {{mock-chat: {{provider: local}}}}
mcp_servers:
  crm:
    url: {crm}
    headers: {{Authorization: "Bearer ${{MCP_TEST_CRM_TOKEN}}"}}
    tenants: [acme]
    timeout_s: 1
    max_result_bytes: 65536
  web: {{url: {web}, allowed_tools: [echo, count]}}
  down: {{url: {dead}, tenants: [acme]}}
tool_policy:
  tools:
    crm__count: {{roles: [admin]}}
    web__count: {{require_approval: always}}
"""


@dataclass
class Setup:
    gateway: LiveServer
    crm: ToolServer
    web: ToolServer
    ledger_url: str

    @property
    def url(self) -> str:
        return self.gateway.url + "/mcp"

    def audit_rows(self, request_id: str | None = None) -> list[Any]:
        self.gateway.server.config.app.state.gateway.ledger.flush(timeout_s=5)
        engine = create_engine(self.ledger_url)
        query = select(audit).where(audit.c.kind == "tool")
        if request_id is not None:
            query = query.where(audit.c.request_id == request_id)
        with engine.connect() as conn:
            rows = list(conn.execute(query.order_by(audit.c.ts)))
        engine.dispose()
        return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("mcp")
    mp = pytest.MonkeyPatch()
    mp.setenv("MCP_TEST_CRM_TOKEN", CRM_TOKEN)
    crm = ToolServer(name="crm", token=CRM_TOKEN).start()
    web = ToolServer(name="web", tools=["echo", "count", "headers"], json_response=True).start()
    (tmp / "routes.yaml").write_text(routes(crm.url, web.url, f"http://127.0.0.1:{free_port()}/mcp"))
    (tmp / "budgets.yaml").write_text(BUDGETS)
    ledger_url = f"sqlite:///{tmp}/ledger.sqlite3"
    settings = Settings(
        routes_path=str(tmp / "routes.yaml"), budgets_path=str(tmp / "budgets.yaml"), ledger_url=ledger_url
    )
    gateway = LiveServer(create_app(settings)).start()
    yield Setup(gateway, crm, web, ledger_url)
    gateway.stop()
    crm.stop()
    web.stop()
    mp.undo()


class Seen:
    """Every HTTP answer the caller's MCP client received: proof of what left the gateway."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def __call__(self, response: httpx2.Response) -> None:
        await response.aread()
        self.texts.append(json.dumps(dict(response.headers)) + response.text)


@asynccontextmanager
async def mcp_client(
    url: str, key: str, seen: Seen | None = None, request_id: str | None = None, mode: str = "auto"
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    hooks = {"response": [seen]} if seen is not None else {}
    async with (
        httpx2.AsyncClient(headers=headers, event_hooks=hooks) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def names(url: str, key: str) -> list[str]:
    async with mcp_client(url, key) as client:
        return sorted(t.name for t in (await client.list_tools()).tools)


async def test_each_caller_sees_its_tenants_servers_filtered_by_role(setup: Setup) -> None:
    crm_user = [
        "crm__big",
        "crm__echo",
        "crm__explode",
        "crm__fail",
        "crm__headers",
        "crm__region",
        "crm__slow",
    ]
    web = ["web__count", "web__echo"]  # not web__headers: outside the server's allowed_tools
    assert await names(setup.url, KEYS["acme-user"]) == sorted(crm_user + web)
    assert await names(setup.url, KEYS["acme-admin"]) == sorted([*crm_user, "crm__count", *web])
    assert await names(setup.url, KEYS["globex-user"]) == web  # crm and down are acme's only
    async with mcp_client(setup.url, KEYS["acme-user"]) as client:
        echo = next(t for t in (await client.list_tools()).tools if t.name == "crm__echo")
    assert echo.input_schema["required"] == ["text"] and echo.description == "Echo the text back."


async def test_a_call_runs_upstream_once_with_the_gateways_credentials_and_is_audited(setup: Setup) -> None:
    seen = Seen()
    async with mcp_client(setup.url, KEYS["acme-admin"], seen, request_id="mcp-call-1") as client:
        result = await client.call_tool("crm__count", {"key": "endpoint-once"})
        upstream = orjson.loads((await client.call_tool("crm__headers", {})).content[0].text)  # type: ignore[union-attr]
        listing = await client.list_tools()
        # an x-mcp-header argument: the caller mirrors it to the gateway, the gateway to the upstream
        region = await client.call_tool("crm__region", {"region": "eu-west"})
    assert region.content == [types.TextContent(type="text", text="eu-west")]
    assert (result.is_error, result.content[0]) == (False, types.TextContent(type="text", text="1"))
    assert setup.crm.counts["endpoint-once"] == 1
    # The upstream got the configured credentials, and never the caller's gateway key.
    assert upstream["authorization"] == f"Bearer {CRM_TOKEN}"
    assert KEYS["acme-admin"] not in json.dumps(upstream)
    # ...and those credentials never reached the caller, in any header or body of /mcp (the listing included).
    assert listing.tools and seen.texts
    assert not [t for t in seen.texts[:2] if CRM_TOKEN in t]  # the answers before the headers tool ran
    rows = setup.audit_rows("mcp-call-1")
    assert [(r.kind, r.action, r.who, r.role, r.tenant, r.status) for r in rows[:1]] == [
        ("tool", "tool_call", "acme/acme-admin", "admin", "acme", 200)
    ]
    target = json.loads(rows[0].target)
    expected = hashlib.sha256(orjson.dumps({"key": "endpoint-once"}, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert (target["tool"], target["outcome"], target["via"], target["arguments_sha256"]) == (
        "crm__count",
        "ok",
        "mcp",
        expected,
    )
    assert (
        target["duration_ms"] > 0 and "endpoint-once" not in rows[0].target
    )  # a digest, never the arguments
    assert [json.loads(r.target)["tool"] for r in rows] == ["crm__count", "crm__headers", "crm__region"]


async def test_refusals_are_mcp_errors_and_never_reach_the_upstream(setup: Setup) -> None:
    before = (setup.crm.calls.copy(), setup.web.calls.copy())
    cases = [
        (KEYS["acme-user"], "crm__count", NOT_ALLOWED, "role_not_allowed"),
        (KEYS["globex-user"], "crm__echo", types.INVALID_PARAMS, "unknown_tool"),  # another tenant's server
        (KEYS["acme-user"], "web__headers", NOT_ALLOWED, "tool_not_allowed"),
        (KEYS["acme-user"], "web__count", NOT_ALLOWED, "approval_required"),
        (KEYS["acme-user"], "nosuch", types.INVALID_PARAMS, "unknown_tool"),
    ]
    for key, tool, code, reason in cases:
        async with mcp_client(setup.url, key, request_id=f"refused-{tool}") as client:
            with pytest.raises(MCPError) as info:
                await client.call_tool(tool, {"key": "refused"})
        assert (info.value.code, info.value.data) == (code, {"code": reason}), tool
        rows = setup.audit_rows(f"refused-{tool}")
        assert [json.loads(r.target)["outcome"] for r in rows] == [reason]
        assert rows[0].status == (404 if reason == "unknown_tool" else 403)
    assert (setup.crm.calls, setup.web.calls) == before
    async with mcp_client(setup.url, KEYS["acme-user"]) as client:
        with pytest.raises(MCPError) as info:
            await client.call_tool("web__count", {"key": "x"})
    assert "requires approval" in info.value.message


async def test_upstream_failures_are_error_results(setup: Setup) -> None:
    async with mcp_client(setup.url, KEYS["acme-user"], request_id="failures") as client:
        slow = await client.call_tool("crm__slow", {"seconds": 3})
        fail = await client.call_tool("crm__fail", {"message": "no such customer"})
        boom = await client.call_tool("crm__explode", {})
        missing = await client.call_tool("crm__nosuch", {})  # allowed (no allowed_tools), unknown upstream
        down = await client.call_tool("down__echo", {"text": "x"})
        big = await client.call_tool("crm__big", {})
    texts = [r.content[0].text for r in (slow, fail, boom, missing, down)]  # type: ignore[union-attr]
    assert [r.is_error for r in (slow, fail, boom, missing, down)] == [True] * 5
    assert texts[0] == "MCP server 'crm' did not answer the call of 'slow' within 1s."
    assert texts[1] == "no such customer"
    assert texts[2].startswith("MCP server 'crm' answered an error") and texts[3].startswith(texts[2][:30])
    assert texts[4] == "MCP server 'down' is unavailable."
    text = big.content[0].text  # type: ignore[union-attr]
    assert not big.is_error and len(text.encode()) <= 65536 and "…[truncated: " in text
    assert text.endswith(" bytes over the limit]") and text.endswith(
        marker(int(text.split(": ")[-1].split()[0]))
    )
    outcomes = [json.loads(r.target)["outcome"] for r in setup.audit_rows("failures")]
    assert outcomes == ["timeout", "tool_error", "error", "error", "unreachable", "ok"]


async def test_a_bad_key_is_401_openai_style_and_a_reviewer_key_403(setup: Setup) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx.AsyncClient() as http:
        for headers in ({}, {"authorization": "Bearer sk-nope"}, {"x-api-key": "sk-nope"}):
            answer = await http.post(setup.url, json=body, headers=headers)
            assert answer.status_code == 401, answer.text
            assert answer.json()["error"]["code"] == "invalid_api_key" and answer.headers["x-request-id"]
        reviewer = await http.post(setup.url, json=body, headers={"x-api-key": KEYS["acme-rev"]})
    assert reviewer.status_code == 403 and reviewer.json()["error"]["type"] == "permission_error"


async def test_a_reload_changes_what_callers_see(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    with ToolServer(tools=["echo"]) as one, ToolServer(tools=["count"]) as two:
        text = f"""
providers: {{local: {{type: mock}}}}
models: {{mock-chat: {{provider: local}}}}
mcp_servers:
  one: {{url: {one.url}}}
"""
        gw = gateway_factory(routes=text, budgets=BUDGETS)
        url = gw.url + "/mcp"
        assert await names(url, KEYS["globex-user"]) == ["one__echo"]
        gw.routes_path.write_text(text + f"  two: {{url: {two.url}, tenants: [globex]}}\n")
        deadline = time.monotonic() + 10
        while (seen := await names(url, KEYS["globex-user"])) != ["one__echo", "two__count"]:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.1)
        assert await names(url, KEYS["acme-user"]) == ["one__echo"]


async def test_a_delegation_token_acts_as_a_user_of_its_key_and_is_audited(setup: Setup) -> None:
    """A sidecar holding a delegation token for an admin key's request gets that tenant's tools as role user
    (crm__count is admin-only), and its calls are audited with the request that handed the token out."""
    secret = setup.gateway.server.config.app.state.gateway.shared.delegation_secret
    grant = delegation.Delegation("acme", "acme-admin", "req-parent-1", int(time.time()) + 60)
    token = delegation.mint(secret, grant)
    async with mcp_client(setup.url, token, request_id="delegated-1") as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        echo = await client.call_tool("crm__echo", {"text": "on behalf"})
    assert "crm__echo" in tools and "crm__count" not in tools
    assert echo.content == [types.TextContent(type="text", text="on behalf")]
    (row,) = setup.audit_rows("delegated-1")
    assert (row.who, row.role) == ("acme/acme-admin", "user")
    assert json.loads(row.target)["parent_request_id"] == "req-parent-1"


async def test_the_first_requests_arriving_together_share_one_lazy_start(
    gateway_factory: GatewayFactory,
) -> None:
    """/mcp starts its MCP machinery on first use; callers arriving at once all get served by one of it."""
    with ToolServer(tools=["echo"]) as one:
        routes = f"""
providers: {{local: {{type: mock}}}}
models: {{mock-chat: {{provider: local}}}}
mcp_servers:
  one: {{url: {one.url}}}
"""
        gw = gateway_factory(routes=routes, budgets=BUDGETS)
        endpoint = next(r.app for r in gw.app.routes if getattr(r, "path", "") == "/mcp")  # type: ignore[attr-defined]
        assert endpoint._manager is None  # nothing started before the first /mcp request
        listings = await asyncio.gather(*(names(gw.url + "/mcp", KEYS["acme-user"]) for _ in range(6)))
        assert listings == [["one__echo"]] * 6
        assert endpoint._manager is not None and one.list_calls == 1  # one start, one upstream listing


def test_the_gateway_starts_without_the_mcp_sdk(tmp_path: Path) -> None:
    """A deployment that never uses tools never imports the MCP SDK: not at import, not at start-up."""
    (tmp_path / "routes.yaml").write_text("providers: {l: {type: mock}}\nmodels: {m: {provider: l}}\n")
    (tmp_path / "budgets.yaml").write_text("tenants: {}\n")
    script = f"""
import asyncio, sys
from gateway.app import create_app
from gateway.settings import Settings
app = create_app(Settings(routes_path={str(tmp_path / "routes.yaml")!r},
                          budgets_path={str(tmp_path / "budgets.yaml")!r}, ledger_url=None))
async def main():
    async with app.router.lifespan_context(app):
        pass
asyncio.run(main())
print(sorted(m for m in sys.modules if m.split(".")[0] in ("mcp", "mcp_types", "httpx2")))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


async def test_a_2025_client_is_served_too(setup: Setup) -> None:
    """Clients of the handshake era (initialize, protocol 2025-*) work against the stateless endpoint."""
    async with mcp_client(setup.url, KEYS["globex-user"], mode="legacy") as client:
        assert client.protocol_version.startswith("2025-")
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        echo = await client.call_tool("web__echo", {"text": "from 2025"})
    assert tools == ["web__count", "web__echo"]
    assert echo.content == [types.TextContent(type="text", text="from 2025")]
