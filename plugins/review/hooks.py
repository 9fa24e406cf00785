"""The review plugin's hooks: ``pre`` (asks the upstream for logprobs when the route judges confidence),
``post`` (holds an answer) and ``tool`` (holds a tool call until a reviewer approves it).

A held answer under ``hold: sync`` keeps the hook call open until a reviewer decides, or until
``hold_timeout_s`` (capped by the request's deadline) passes; then ``on_timeout`` decides, atomically,
so a reviewer's decision in the same instant is the one that counts. Under ``hold: async`` the client
gets 409 ``review_pending`` at once and polls ``GET /v1/plugins/review/reviews/{id}``.

What the client gets (README "What the client sees"): approved → the answer; edited → the edited
answer; rejected → 422 ``review_rejected`` with the reviewer's reason; no decision in time → 504
``review_timeout`` (or the answer, under ``on_timeout: release``). Every refusal says
``x-should-retry: false``: a retry would only queue the same question again.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
import time
from typing import Any

from plugins.review.metrics import ReviewMetrics
from plugins.review.options import Options, confidence, without_logprobs
from plugins.review.store import Queue, Record
from plugins.sdk import Answer, HookCall, continue_, modify, reject
from plugins.sdk.protocol import Annotations

DEADLINE_MARGIN_S = 1.0
"""A sync hold answers this long before the request's deadline, so the gateway still has time to send it."""
TOOL_REJECT_STATUS = 422


def rejection(reason: str, *, review_id: str) -> Answer:
    text = f"A reviewer rejected the answer: {reason}" if reason else "A reviewer rejected the answer."
    notes: Annotations = {"review": "rejected", "review_id": review_id}
    return reject(422, "review_rejected", text, notes, review_id=review_id, retry=False)


def edited_answer(response: dict[str, Any], content: str) -> dict[str, Any]:
    """The answer with its first choice's text replaced by the reviewer's."""
    out = copy.deepcopy(response)
    choice = out["choices"][0]
    if isinstance(choice.get("message"), dict):
        choice["message"]["content"] = content
    else:
        choice["text"] = content
    return out


def answer_text(response: dict[str, Any] | None) -> str:
    choices = (response or {}).get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return str(choice.get("text") or "")


class Review:
    def __init__(self, queue: Queue, metrics: ReviewMetrics) -> None:
        self.queue = queue
        self.metrics = metrics

    async def aclose(self) -> None:
        await self.queue.aclose()

    # --- hooks ------------------------------------------------------------------------------------

    async def pre(self, call: HookCall) -> Answer:
        options = Options.parse(call.config)
        if not options.logprobs or options.confidence_below is None or "messages" not in call.request:
            return continue_()
        if call.request.get("logprobs"):
            return continue_()
        # The client did not ask: the post hook strips them again (it sees this annotation).
        return modify(request={**call.request, "logprobs": True}, annotations={"logprobs": "added"})

    async def post(self, call: HookCall) -> Answer:
        options = Options.parse(call.config)
        assert call.response is not None  # the SDK checks a post call carries one
        response = call.response
        stripped = (call.annotations.get("review") or {}).get("logprobs") == "added"
        reasons = options.reasons(call.annotations, response)
        if stripped:
            response = without_logprobs(response)
        if not reasons:
            return modify(response=response) if stripped else continue_()
        item = self._item(call, "answer", options, reasons, secrets.token_urlsafe(12))
        item["response"] = response
        if call.served is not None:
            item["model"] = str(call.served.get("model") or item["model"])
            item["cost_usd"] = call.served.get("cost_usd")
        p = confidence(call.response)
        if p is not None:
            item["confidence"] = round(p, 4)
        if options.hold == "async":
            item["deadline"] = time.time() + options.review_ttl_s
            await self._put(item, options.review_ttl_s)
            return reject(
                409,
                "review_pending",
                "The answer is held for human review; poll GET /v1/plugins/review/reviews/"
                f"{item['id']} for it.",
                {"review": "pending", "review_id": item["id"]},
                review_id=item["id"],
                retry=False,
            )
        record = await self._hold(call, item, options)
        return self._answer_outcome(record, response, stripped, options)

    async def tool(self, call: HookCall) -> Answer:
        options = Options.parse(call.config)
        tool_call = call.tool_call or {}
        if not options.holds_tool(tool_call):
            return continue_()
        # one item per tool call, however often it is asked about: the id is the call's
        key = f"{call.tenant}\0{call.request_id}\0{tool_call.get('id')}\0{tool_call.get('name')}"
        item_id = "tool_" + hashlib.sha256(key.encode()).hexdigest()[:24]
        item = self._item(call, "tool", options, ["tool approval"], item_id)
        item["tool_call"] = {k: tool_call.get(k) for k in ("id", "name", "arguments")}
        record = await self._hold(call, item, options)
        notes: dict[str, Any] = {"review_id": item["id"]}
        if record.status in ("approved", "released"):
            return continue_({**notes, "review": record.status})
        if record.status == "edited":
            decision = record.decision or {}
            edited = {**tool_call, "arguments": decision.get("arguments", tool_call.get("arguments"))}
            return modify(tool_call=edited, annotations={**notes, "review": "edited"})
        if record.status == "rejected":
            reason = (record.decision or {}).get("reason") or ""
            text = f"A reviewer rejected the tool call: {reason}" if reason else "A reviewer rejected it."
            return reject(TOOL_REJECT_STATUS, "review_rejected", text, {**notes, "review": "rejected"})
        return reject(408, "review_timeout", "No reviewer approved the tool call in time.", notes)

    # --- holding -------------------------------------------------------------------------------------

    def _item(
        self, call: HookCall, kind: str, options: Options, reasons: list[str], item_id: str
    ) -> dict[str, Any]:
        now = time.time()
        return {
            "id": item_id if kind == "tool" else "rev_" + item_id,
            "kind": kind,
            "tenant": call.tenant,
            "key_id": call.key_id,
            "request_id": call.request_id,
            "endpoint": call.endpoint,
            "route": call.route,
            "model": str(call.request.get("model") or ""),
            "hold": "sync" if kind == "tool" else options.hold,
            "on_timeout": options.on_timeout,
            "reasons": reasons,
            "created": now,
            "deadline": now + self._wait_s(call, options),
            "request": call.request,
            "annotations": {k: v for k, v in call.annotations.items() if k != "review"},
        }

    @staticmethod
    def _wait_s(call: HookCall, options: Options) -> float:
        wait = options.hold_timeout_s
        if call.deadline is not None:
            wait = min(wait, call.deadline - time.time() - DEADLINE_MARGIN_S)
        return max(wait, 0.0)

    async def _put(self, item: dict[str, Any], ttl_s: float) -> Record:
        record = await self.queue.put(item, ttl_s)
        self.metrics.held(item)
        return record

    async def _hold(self, call: HookCall, item: dict[str, Any], options: Options) -> Record:
        """Queue the item and wait for its decision; past the wait, ``on_timeout`` decides (unless a
        reviewer's decision got in first: then that one counts)."""
        record = await self._put(item, item["deadline"] - item["created"])
        item = record.item  # a tool call asked again: the item already queued
        if record.status == "pending":
            waited = await self.queue.wait(item["tenant"], item["id"], item["deadline"] - time.time())
            record = waited if waited is not None else record
        if record.status != "pending":
            return record
        status = "released" if options.on_timeout == "release" else "timed_out"
        now = time.time()
        decision = {"action": "timeout", "outcome": options.on_timeout, "at": now, "by": None}
        won, current = await self.queue.decide(item["tenant"], item["id"], status, decision)
        if won:
            self.metrics.decided(item, status, now)
        return current if current is not None else Record(item, status, decision)

    @staticmethod
    def _answer_outcome(record: Record, response: dict[str, Any], stripped: bool, options: Options) -> Answer:
        notes: dict[str, Any] = {"review_id": record.item["id"], "review": record.status}
        decision = record.decision or {}
        if record.status == "approved" or record.status == "released":
            return modify(response=response, annotations=notes) if stripped else continue_(notes)
        if record.status == "edited":
            return modify(
                response=edited_answer(response, str(decision.get("content") or "")), annotations=notes
            )
        if record.status == "rejected":
            return rejection(str(decision.get("reason") or ""), review_id=record.item["id"])
        return reject(
            504,
            "review_timeout",
            f"No reviewer decided on the answer within {options.hold_timeout_s:g}s.",
            notes,
            retry=False,
        )
