"""The pipeline's side of a hosted-MCP ``/v1/responses`` request: check it, build the loop, answer.

Called by ``Pipeline.handle`` once the caller is authenticated, the route planned and the conversation
restored, in place of admission and dispatch: the request itself is not admitted (it costs 0, and logs
one line and one 0-cost ledger row); each model step is a delegated request of its own
(``Turns.delegate``), so admission, the budget, retries, fallback, plugins and settlement all apply per
step, and the ledger holds one row per step with this request as ``parent_request_id``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

import orjson

from gateway.config.model import RoutesConfig
from gateway.context import Exchange
from gateway.errors import BadRequest, GatewayError, PluginRejected
from gateway.hosted.backend import Approved, HostedTools, Limits, Listing, Review, StepResult
from gateway.hosted.calls import Runner
from gateway.hosted.events import Output
from gateway.hosted.loop import Loop
from gateway.hosted.offers import offers_for
from gateway.hosted.spec import HostedTool
from gateway.ingress.responses import Echo
from gateway.ledger import Ledger
from gateway.pipeline.admit import estimate
from gateway.pipeline.parse import parse
from gateway.pipeline.settle import format_usd
from gateway.plugins.stage import HookStage, run_tool_hooks
from gateway.providers.base import RESPONSES_EXTRA, Operation
from gateway.responses import Reply
from gateway.responses_api.store import StoredResponse
from gateway.responses_api.turn import Turns
from gateway.runtime import Runtime
from gateway.store.base import NANO
from gateway.tools import audit
from gateway.tools.policy import limits as policy_limits
from gateway.tools.policy import server_for

log = logging.getLogger("gateway.hosted")

DRY_RUN = "dry-run"
_STEP_DROPS = ("stream", "stream_options", RESPONSES_EXTRA)
_STEP_HEADERS = ("x-gateway-task", "x-gateway-cache", "x-gateway-user", "x-gateway-trace")
"""The caller's gateway headers each model step is made with: routed, cached, attributed and traced as
the request itself is."""


class HostedIngress(Protocol):
    """``ResponsesIngress`` as the loop sees it."""

    response_id: str
    created_at: int
    input_items: list[dict[str, Any]]
    chain: Sequence[StoredResponse]

    @property
    def echo(self) -> Echo | None: ...

    @property
    def raw(self) -> dict[str, Any]: ...

    async def remember(self, response: dict[str, Any] | None = None) -> None: ...


async def respond(
    tools: HostedTools,
    ex: Exchange,
    runtime: Runtime,
    ingress: HostedIngress,
    chat: dict[str, Any],
    headers: Mapping[str, str],
    turns: Turns,
    stage: HookStage | None,
    ledger: Ledger | None,
    after: Callable[[], Awaitable[None]],
    now: Callable[[], None],
) -> Reply:
    echo, principal, plan = ingress.echo, ex.principal, ex.plan
    assert echo is not None and principal is not None and plan is not None
    mode = headers.get("x-gateway-tools")
    if mode is not None and mode != DRY_RUN:
        raise BadRequest("x-gateway-tools: the only value is 'dry-run'", param="x-gateway-tools")
    config = runtime.routes
    listings = [_listing(h, config, principal.tenant, ingress.chain) for h in echo.hosted]
    limits = _limits(ingress.raw, runtime)
    approvals = _approvals(ingress.input_items, ingress.chain)
    base = {k: v for k, v in chat.items() if k not in _STEP_DROPS}
    margin = config.defaults.estimate_margin
    carried = {name: value for name in _STEP_HEADERS if (value := headers.get(name))}

    async def step(body: dict[str, Any], deadline: float) -> StepResult:
        # Shielded: a client that leaves a stream mid-step cancels the loop, not the step, which still
        # settles (else its reservation would wait for its lease to run out).
        return await asyncio.shield(one_step(body, deadline))

    async def one_step(body: dict[str, Any], deadline: float) -> StepResult:
        # The step's deadline is the sooner of its route's and the loop's wall time: past it the step
        # ends as any request does at its deadline (504, its reservation released, nothing billed).
        reply = await turns.delegate(
            ex, body, "Hosted MCP tools", "hosted_tools_unavailable", deadline, carried
        )
        try:
            answer = orjson.loads(reply.body) if reply.body else {}
        finally:
            if reply.after is not None:
                # Settled before the next step is admitted, and at once: a settlement normally waits for
                # a quiet moment (``Later``, up to 2 ms), but here the next step is what waits for it.
                settling = asyncio.ensure_future(reply.after())
                await asyncio.sleep(0)  # it runs up to that wait…
                now()  # …which ends here
                await settling
        cost = Decimal(reply.headers.get("x-gateway-cost-usd", "0"))
        if reply.status == 200:
            return StepResult(answer, cost)
        error = answer.get("error") if isinstance(answer, dict) else None
        error = error if isinstance(error, dict) else {}
        message = str(error.get("message") or f"the model step failed with HTTP {reply.status}")
        failure = GatewayError(message, status=reply.status, code=error.get("code"), type=error.get("type"))
        return StepResult(None, cost, failure)

    def worst_case(body: dict[str, Any]) -> int:
        return estimate(parse(Operation.CHAT, dict(body), {}), plan, margin, principal.tenant).cost_nano

    started = time.monotonic()
    review: Review | None = None
    hooks = plan.hooks
    if hooks is not None and hooks.tool and stage is not None:
        # A reviewer's wait counts against the loop's wall time.
        caller = stage.caller(ex, headers, started + limits.max_wall_s)
        targets = hooks.tool

        async def review(call: dict[str, Any]) -> dict[str, Any] | str:
            answer = await run_tool_hooks(stage, caller, targets, base, call)
            return answer.message if isinstance(answer, PluginRejected) else answer

    def audited(tool: str, arguments: dict[str, Any] | None, outcome: str, took: float, key: str) -> None:
        audit.record(
            ledger,
            request_id=ex.request_id,
            principal=principal,
            tool=tool,
            arguments=arguments,
            outcome=outcome,
            duration_s=took,
            via="responses",
            call_id=key,
        )

    role = principal.role
    loop = Loop(
        out=Output(ingress.response_id, ingress.created_at, echo, stream=bool(chat.get("stream"))),
        chat=base,
        listings=listings,
        offer=lambda hosted, server, found: offers_for(config, principal.tenant, role, hosted, server, found),
        runner=Runner(tools.servers, tools.records, principal.tenant, mode == DRY_RUN, audited),
        step=step,
        estimate=worst_case,
        limits=limits,
        started=started,
        review=review,
        approvals=approvals,
    )
    if not chat.get("stream"):
        async for _ in loop.run():
            pass
        assert loop.final is not None
        await ingress.remember(loop.final)
        out = ex.response_headers()
        out["x-gateway-cost-usd"] = format_usd(loop.spent)
        return Reply(200, out, orjson.dumps(loop.final), after=after)
    frames = loop.run()
    # Up to the first model step's answer before answering: a request refused whole (its first step over
    # the budget, the upstream down, and no tool run yet) gets its HTTP error, not a failed stream.
    early = [frame async for frame in _until(frames, lambda: loop.steps > 0 or loop.final is not None)]
    return Reply(200, ex.response_headers(), frames=_stored(early, frames, loop, ingress), after=after)


async def _until(frames: AsyncGenerator[bytes, None], done: Callable[[], bool]) -> AsyncIterator[bytes]:
    if done():
        return
    async for frame in frames:
        yield frame
        if done():
            return


async def _stored(
    early: list[bytes], frames: AsyncGenerator[bytes, None], loop: Loop, ingress: HostedIngress
) -> AsyncGenerator[bytes, None]:
    """The frames, with the response stored before its last event (a next turn sent at once finds it);
    a stream that breaks after its start ends with ``error`` and ``response.failed``, never a silent cut."""
    remembered = False
    try:
        for frame in early:
            if loop.final is not None and not remembered:
                remembered = True
                await ingress.remember(loop.final)
            yield frame
        async for frame in frames:
            if loop.final is not None and not remembered:
                remembered = True
                await ingress.remember(loop.final)
            yield frame
    except GatewayError as err:
        yield loop.fail(err.code or "server_error", err.message)
    except Exception:
        log.exception("hosted tool loop of %s failed", loop.out.response_id)
        yield loop.fail("server_error", "The gateway hit an internal error.")
    finally:
        await frames.aclose()  # a client gone mid-stream: the loop stops here (a step still settles)


def _listing(
    hosted: HostedTool, config: RoutesConfig, tenant: str, chain: Sequence[StoredResponse]
) -> Listing:
    server = server_for(config, tenant, hosted.label)
    if server is None:  # another tenant's server reads exactly like one that does not exist
        raise BadRequest(
            f"{hosted.path}.server_label: no MCP server {hosted.label[:100]!r} is configured for you",
            param=f"{hosted.path}.server_label",
            code="unknown_mcp_server",
        )
    if hosted.server_url is not None and hosted.server_url.rstrip("/") != server.url.rstrip("/"):
        raise BadRequest(
            f"{hosted.path}.server_url: the gateway calls only configured MCP servers; omit server_url "
            f"or give the configured one for {hosted.label!r}",
            param=f"{hosted.path}.server_url",
            code="mcp_server_not_allowed",
        )
    shown = any(
        item.get("type") == "mcp_list_tools" and item.get("server_label") == hosted.label
        for turn in chain
        for item in turn.response.get("output") or ()
    )
    return Listing(hosted, server, shown)


def _limits(raw: dict[str, Any], runtime: Runtime) -> Limits:
    asked = raw.get("max_tool_calls")
    if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int) or asked < 0):
        raise BadRequest("max_tool_calls: must be a non-negative integer", param="max_tool_calls")
    policy = policy_limits(runtime.routes.tool_policy, max_tool_calls=asked)
    ceiling = None if policy.max_cost_usd is None else round(policy.max_cost_usd * NANO)
    return Limits(policy.max_tool_calls, policy.max_wall_s, ceiling)


def _approvals(own: list[dict[str, Any]], chain: Sequence[StoredResponse]) -> list[Approved]:
    """This turn's ``mcp_approval_response`` items, each matched to the request it answers."""
    asked = {
        item.get("id"): (turn.id, item)
        for turn in chain
        for item in turn.response.get("output") or ()
        if item.get("type") == "mcp_approval_request"
    }
    out = []
    for i, item in enumerate(own):
        if item.get("type") != "mcp_approval_response":
            continue
        path = f"input[{i}]"
        request_id, approve = item.get("approval_request_id"), item.get("approve")
        if not isinstance(approve, bool):
            raise BadRequest(f"{path}.approve: required, must be a boolean", param=f"{path}.approve")
        found = asked.get(request_id) if isinstance(request_id, str) else None
        if found is None:
            raise BadRequest(
                f"{path}.approval_request_id: no such approval request in the conversation "
                "(send it with the previous_response_id of the response that asked)",
                param=f"{path}.approval_request_id",
            )
        holder, request = found
        out.append(Approved(f"{holder}:{request['id']}", request, approve))
    return out
