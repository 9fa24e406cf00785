"""The model↔tool loop of one ``/v1/responses`` request with hosted MCP tools.

    list tools → [approved calls of the last turn] → step → calls → step → … → text (or a limit)

Each model step is a whole request through the pipeline (``Step``: admitted, priced, settled); the loop
adds up their usage and cost. Before a step it checks the wall time and the cost ceiling: the step's
worst case (``Estimate``, what admission would reserve) on top of what was spent must stay within
``max_cost_usd``; the tenant's own budget is admission's to refuse, and that refusal ends the loop too.
The wall time also bounds each step: its deadline is the sooner of its route's and the loop's end, and
a step cut by it ends as any request at its deadline (a 504, its reservation released, nothing billed).
Before each tool call it checks ``max_tool_calls``. Each limit ends the response ``incomplete`` with
the output so far; nothing is left reserved, as every step settled itself.

A call that needs an approval ends the response with an ``mcp_approval_request`` (``approver: client``)
or waits on the route's ``tool`` hook (``approver: reviewer``, the review plugin).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from gateway.errors import GatewayError
from gateway.hosted import items
from gateway.hosted.backend import Approved, CallResult, Estimate, Limits, Listing, Review, Step
from gateway.hosted.calls import Runner
from gateway.hosted.events import Output
from gateway.hosted.offers import Offer, Offers
from gateway.ingress.responses import usage_of
from gateway.store.base import NANO

MAX_CALLS = "max_tool_calls"
MAX_COST = "max_cost"
MAX_WALL = "max_wall_time"
BUDGET = "budget_exceeded"
REJECTED = "The call was rejected by the approver and was not run."


@dataclass(slots=True)
class _Calls:
    """One step's calls as they are handled: the tool results for the next step, or why it ends."""

    results: list[dict[str, Any]] = field(default_factory=list)
    client_acts: bool = False
    """An approval was asked, or the client's own function called: the response ends, completed."""


@dataclass(slots=True)
class Loop:
    out: Output
    chat: dict[str, Any]
    """The first step's chat body: history and this turn's input as messages, the client's functions."""
    listings: list[Listing]
    offer: Offers
    runner: Runner
    step: Step
    estimate: Estimate
    limits: Limits
    review: Review | None
    approvals: list[Approved] = field(default_factory=list)
    offers: dict[str, Offer] = field(default_factory=dict)
    """By function name, once listed."""
    calls: int = 0
    spent: Decimal = Decimal(0)
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    steps: int = 0
    ran: int = 0
    """Tool calls that ran (not refused, not dry): a step failing after one is not the client's error."""
    final: dict[str, Any] | None = None
    started: float = field(default_factory=time.monotonic)

    def _left(self) -> float:
        # As the steps' deadline is computed: at or past it (by ``passed``), this is never above 0.
        return self.started + self.limits.max_wall_s - time.monotonic()

    def _finish(self, status: str, reason: str | None = None, error: dict[str, Any] | None = None) -> bytes:
        incomplete = {"reason": reason} if reason else None
        self.final = self.out.response(status, usage_of(self.usage), incomplete, error)
        return b"".join(self.out.end(self.final))

    async def run(self) -> AsyncGenerator[bytes, None]:
        """The response's frames (none when not streaming); ``final`` holds the Response at the end.
        Raises ``GatewayError`` only while nothing has run yet (the request then fails as a whole)."""
        for frame in self.out.start():
            yield frame
        for listing in self.listings:
            async for frame in self._list(listing):
                yield frame
        messages: list[dict[str, Any]] = list(self.chat["messages"])
        for approved in self.approvals:
            async for frame in self._answer(approved, messages):
                yield frame
            if self.final is not None:
                yield self._end_frames()
                return
        functions = list(self.chat.get("tools") or ()) + [o.function() for o in self.offers.values()]
        while True:
            body = {**self.chat, "messages": messages}
            if functions:
                body["tools"] = functions
            if self._left() <= 0:
                yield self._finish("incomplete", MAX_WALL)
                return
            limit = self.limits.max_cost_nano
            if limit is not None and self.spent * NANO + self.estimate(body) > limit:
                yield self._finish("incomplete", MAX_COST)
                return
            result = await self.step(body, self.started + self.limits.max_wall_s)
            self.steps += 1
            self.spent += result.cost
            if result.answer is None:
                yield self._failed(result.error)
                return
            self._add_usage(result.answer.get("usage"))
            message, finish = _choice(result.answer)
            text = message.get("content")
            calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
            if isinstance(text, str) and text:
                status = "incomplete" if finish == "length" and not calls else "completed"
                for frame in self.out.message(items.new_id("msg"), text, status):
                    yield frame
            if not calls:
                if finish == "length":
                    yield self._finish("incomplete", "max_output_tokens")
                else:
                    yield self._finish("completed")
                return
            assistant: dict[str, Any] = {"role": "assistant", "content": text or None, "tool_calls": calls}
            handled = _Calls()
            async for frame in self._calls(calls, handled):
                yield frame
            if self.final is not None:
                return
            if handled.client_acts:
                yield self._finish("completed")
                return
            messages = [*messages, assistant, *handled.results]

    async def _calls(self, calls: list[dict[str, Any]], handled: _Calls) -> AsyncIterator[bytes]:
        """A step's calls in order: the client's functions passed out, MCP calls checked, asked for
        approval or run; ends the response (``final``, its last frames yielded) at ``max_tool_calls``."""
        for call in calls:
            function = call.get("function")
            function = function if isinstance(function, dict) else {}
            name = str(function.get("name") or "")
            arguments = function.get("arguments")
            arguments = arguments if isinstance(arguments, str) else "{}"
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:  # the result must name the call it answers
                call_id = call["id"] = items.new_id("call")
            key = f"{self.out.response_id}:{call_id}"
            offer = self.offers.get(name)
            label = self._label_of(name)
            if offer is None and label is None:  # the client's own function: the client runs it
                for frame in self.out.whole(_function_call(call_id, name, arguments)):
                    yield frame
                handled.client_acts = True
                continue
            if self.calls >= self.limits.max_tool_calls:
                yield self._finish("incomplete", MAX_CALLS)
                return
            if self._left() <= 0:  # not begun at all rather than cut short with its outcome unknown
                yield self._finish("incomplete", MAX_WALL)
                return
            self.calls += 1
            if offer is None:  # a tool of a hosted server that was not offered
                assert label is not None
                error = items.execution_error(f"tool {name!r} is not available")
                refused = CallResult(None, error, "unknown_tool")
                async for frame in self._record(label, name.split("__", 1)[-1], arguments, refused, key):
                    yield frame
                handled.results.append(_tool_message(call_id, refused))
                continue
            if offer.approval == "client" and not self.runner.dry_run:
                request = items.approval_request_item(
                    items.new_id("mcpr"), offer.label, offer.tool.name, arguments
                )
                for frame in self.out.whole(request):
                    yield frame
                handled.client_acts = True
                continue
            outcome: CallResult | None = None
            async for part in self._call(offer, arguments, key):
                if isinstance(part, CallResult):
                    outcome = part
                else:
                    yield part
            if self.final is not None:  # the wall time ran out during the call
                yield self._end_frames()
                return
            assert outcome is not None
            handled.results.append(_tool_message(call_id, outcome))

    def fail(self, code: str, message: str) -> bytes:
        """End a stream that broke after its start: the partial output, ``status: failed``."""
        return self._finish("failed", error={"code": code, "message": message})

    def _end_frames(self) -> bytes:
        assert self.final is not None
        return b"".join(self.out.end(self.final))

    async def _list(self, listing: Listing) -> AsyncIterator[bytes]:
        label = listing.hosted.label
        item = items.list_tools_item(label, [])
        index = -1
        if not listing.shown:
            index, frames = self.out.list_started(item)
            for frame in frames:
                yield frame
        try:
            tools = await self.runner.servers.list_tools(listing.server)
        except GatewayError as err:  # the server is down: the model goes on without its tools
            tools, item["error"] = [], err.message
        offers = self.offer(listing.hosted, listing.server, tools)
        for offer in offers:
            self.offers[items.function_name(label, offer.tool.name)] = offer
        item["tools"] = [o.tool.listed() for o in offers]
        if index >= 0:
            for frame in self.out.list_done(index, item):
                yield frame

    def _label_of(self, name: str) -> str | None:
        """The hosted server a function name points into (a tool not offered), or None."""
        return next(
            (
                listing.hosted.label
                for listing in self.listings
                if name.startswith(items.function_name(listing.hosted.label, ""))
            ),
            None,
        )

    def _add_usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        for name in ("prompt_tokens", "completion_tokens"):
            value = usage.get(name)
            if type(value) is int:
                self.usage[name] += value

    def _failed(self, error: GatewayError | None) -> bytes:
        assert error is not None
        if self._left() <= 0:
            # The step's deadline was the wall time's: cut at it (504), or begun too late for any try.
            return self._finish("incomplete", MAX_WALL)
        if error.code == "budget_exceeded" and (self.steps > 1 or self.ran):
            return self._finish("incomplete", BUDGET)
        if self.steps == 1 and self.ran == 0:
            raise error  # nothing happened the client must hear of: the request fails as a whole
        return self._finish("failed", error={"code": error.code or "server_error", "message": error.message})

    async def _record(
        self, label: str, name: str, arguments: str, result: CallResult, key: str, approval: str | None = None
    ) -> AsyncIterator[bytes]:
        """An ``mcp_call`` item for a call that was not run (refused or rejected), audited."""
        self.runner.refused(f"{label}__{name}", arguments, result.outcome, key)
        item = items.call_item(
            items.new_id("mcp"),
            label,
            name,
            arguments,
            output=result.output,
            error=result.error,
            approval_request_id=approval,
            status="failed" if result.error else "completed",
        )
        index, frames = self.out.call_started(item)
        for frame in frames + self.out.call_done(index, item):
            yield frame

    async def _call(
        self, offer: Offer, arguments: str, key: str, approval: str | None = None
    ) -> AsyncIterator[bytes | CallResult]:
        """Run one offered call (asking the reviewer first if it must); yields its frames, then its result."""
        item = items.call_item(
            items.new_id("mcp"),
            offer.label,
            offer.tool.name,
            arguments,
            approval_request_id=approval,
            status="calling",
        )
        index, frames = self.out.call_started(item)
        for frame in frames:
            yield frame
        result: CallResult
        if offer.approval == "reviewer" and approval is None and not self.runner.dry_run:
            reviewed = await self._review(item, arguments)
            if isinstance(reviewed, CallResult):
                result = reviewed
                self.runner.refused(f"{offer.label}__{offer.tool.name}", arguments, result.outcome, key)
            else:
                item["arguments"] = arguments = reviewed
                result = await self._run(offer, arguments, key)
        else:
            result = await self._run(offer, arguments, key)
        done = {**item, "output": result.output, "error": result.error}
        done["status"] = "failed" if result.error else "completed"
        for frame in self.out.call_done(index, done):
            yield frame
        if result.wall and self.final is None:
            self._finish_quiet("incomplete", MAX_WALL)
        yield result

    async def _run(self, offer: Offer, arguments: str, key: str) -> CallResult:
        result = await self.runner.run(offer.server, offer.tool, arguments, key, max(self._left(), 0.001))
        if result.outcome not in ("dry_run", "invalid_arguments"):
            self.ran += 1
        return result

    async def _review(self, item: dict[str, Any], arguments: str) -> CallResult | str:
        """The reviewer's arguments (maybe edited), or the rejection as the tool's result."""
        if self.review is None:
            message = "this tool needs a reviewer's approval and no review plugin is on this route; not run"
            return CallResult(None, items.execution_error(message), "approval_required")
        name = f"{item['server_label']}__{item['name']}"
        try:
            answer = await self.review({"id": item["id"], "name": name, "arguments": arguments})
        except GatewayError as err:  # the reviewer is unreachable (a tool hook always fails closed)
            if self._left() <= 0:  # the wait reached the wall time (the reviewer's deadline is the loop's)
                message = "the response's max_wall_s ran out while the call waited for a reviewer; not run"
                return CallResult(None, items.protocol_error(504, message), "timeout", wall=True)
            message = f"the reviewer could not decide ({err.message}); not run"
            return CallResult(None, items.execution_error(message), "approval_required")
        if isinstance(answer, str):
            return CallResult(None, items.execution_error(f"{REJECTED} {answer}".strip()), "rejected")
        edited = answer.get("arguments", arguments)
        return edited if isinstance(edited, str) else arguments

    def _finish_quiet(self, status: str, reason: str) -> None:
        self.final = self.out.response(status, usage_of(self.usage), {"reason": reason})

    async def _answer(self, approved: Approved, messages: list[dict[str, Any]]) -> AsyncIterator[bytes]:
        """An approval of the last turn: run the call (once, under the request's key) or record the
        rejection; either way the model reads the outcome as the call's result."""
        request = approved.request
        label, name, arguments = request["server_label"], request["name"], request["arguments"]
        call_id = items.new_id("call")
        offer = self.offers.get(items.function_name(label, name))
        if offer is None:
            error = items.execution_error(f"tool {name!r} is not available; not run")
            result = CallResult(None, error, "unknown_tool")
        elif not approved.approve:
            result = CallResult(None, items.execution_error(REJECTED), "rejected")
        else:
            if self.calls >= self.limits.max_tool_calls:
                self._finish_quiet("incomplete", MAX_CALLS)
                return
            self.calls += 1
            outcome: CallResult | None = None
            async for part in self._call(offer, arguments, approved.key, request["id"]):
                if isinstance(part, CallResult):
                    outcome = part
                else:
                    yield part
            assert outcome is not None
            messages.extend(_pair(call_id, label, name, arguments, outcome))
            return
        async for frame in self._record(label, name, arguments, result, approved.key, request["id"]):
            yield frame
        messages.extend(_pair(call_id, label, name, arguments, result))


def _choice(answer: dict[str, Any]) -> tuple[dict[str, Any], object]:
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return {}, None
    message = choices[0].get("message")
    return (message if isinstance(message, dict) else {}), choices[0].get("finish_reason")


def _function_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": items.new_id("fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def _tool_message(call_id: str, result: CallResult) -> dict[str, Any]:
    item = {"output": result.output, "error": result.error}
    return {"role": "tool", "tool_call_id": call_id, "content": items.result_text(item)}


def _pair(call_id: str, label: str, name: str, arguments: str, result: CallResult) -> list[dict[str, Any]]:
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": items.function_name(label, name), "arguments": arguments},
    }
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        _tool_message(call_id, result),
    ]
