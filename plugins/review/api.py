"""The review API (``/api/...`` here; ``/v1/plugins/review/...`` through the gateway) and the page.

Who is calling comes from the gateway: ``x-gateway-tenant``, ``x-gateway-key-id``, ``x-gateway-role``
(the gateway drops any a client sends, and only the gateway has the plugin token). A call without them
did not come through the gateway and gets 403, the page's static files excepted.

- ``GET queue`` → ``{items: [...]}``: the tenant's pending items, oldest first (reviewer, admin).
- ``GET queue/{id}`` → the whole item: request, answer or tool call, annotations, status, decision.
- ``POST queue/{id}/decision`` ``{action: approve | reject | edit, reason?, content? | arguments?}`` →
  200 the decided item; 409 ``review_conflict`` when another decision came first (it is in the body);
  404 for an id not in this tenant's queue. Each decision answers with ``x-gateway-audit``, which the
  gateway writes to its audit table with the reviewer's key id.
- ``GET reviews/{id}`` (any key of the tenant; a ``user`` key only its own items): 202 while pending,
  200 with the answer once approved or edited, the rejection's error (422 ``review_rejected``, 504
  ``review_timeout``) otherwise.
- ``GET ui/`` the reviewer page; ``ui/<file>`` its script and stylesheet.
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from plugins.review.hooks import Review, answer_text, edited_answer
from plugins.review.store import Record

LIST_LIMIT = 200
ABANDONED_S = 30.0
"""A sync item still pending this long after its deadline lost its waiter (a replica died): timed out."""
AUDIT_TEXT = 4000
"""Characters of an answer kept in the audit row (the audit header must stay small); the full text stays
in the item, and the row has its sha256 too."""
UI_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
UI_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
REVIEWERS = ("reviewer", "admin")


def error(
    status: int, message: str, code: str, type_: str = "invalid_request_error", **extra: Any
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code, **extra}}
    headers = (
        {"x-gateway-review-id": extra["review_id"], "x-should-retry": "false"}
        if "review_id" in extra
        else None
    )
    return JSONResponse(body, status_code=status, headers=headers)


class Caller:
    def __init__(self, request: Request) -> None:
        h = request.headers
        self.tenant = h.get("x-gateway-tenant") or ""
        self.key_id = h.get("x-gateway-key-id") or ""
        self.role = h.get("x-gateway-role") or ""


def _caller(request: Request, *, reviewer: bool) -> Caller | JSONResponse:
    caller = Caller(request)
    if not caller.tenant or not caller.key_id:
        return error(403, "Call the review API through the gateway.", "permission_denied", "permission_error")
    if reviewer and caller.role not in REVIEWERS:
        return error(
            403, "The review queue needs a reviewer or admin key.", "permission_denied", "permission_error"
        )
    return caller


def summary(record: Record) -> dict[str, Any]:
    item = record.item
    if item["kind"] == "tool":
        call = item.get("tool_call") or {}
        preview = f"{call.get('name')}({str(call.get('arguments') or '')[:100]})"
    else:
        preview = answer_text(item.get("response"))[:140] or _calls(item.get("response"))
    fields = ("id", "kind", "route", "model", "hold", "reasons", "created", "deadline", "key_id")
    return {**{k: item.get(k) for k in fields}, "status": record.status, "preview": preview}


def _calls(response: dict[str, Any] | None) -> str:
    """An answer without text that calls tools, previewed by their names."""
    choices = (response or {}).get("choices") or [{}]
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(calls, list):
        return ""
    names = [str((c.get("function") or {}).get("name")) for c in calls if isinstance(c, dict)]
    return "calls " + ", ".join(names)


def full(record: Record) -> dict[str, Any]:
    return {**record.item, "status": record.status, "decision": record.decision}


def _short(text: str) -> dict[str, Any]:
    return {
        "text": text[:AUDIT_TEXT],
        "truncated": len(text) > AUDIT_TEXT,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


class ReviewApi:
    def __init__(self, review: Review) -> None:
        self.review = review
        self.queue = review.queue

    def routes(self) -> list[Route]:
        return [
            Route("/queue", self.list_queue, methods=["GET"]),
            Route("/queue/{id}", self.get_item, methods=["GET"]),
            Route("/queue/{id}/decision", self.decide, methods=["POST"]),
            Route("/reviews/{id}", self.client_view, methods=["GET"]),
            Route("/ui", lambda r: RedirectResponse("ui/", 308), methods=["GET", "HEAD"]),
            Route("/ui/", self.ui_file, methods=["GET", "HEAD"]),
            Route("/ui/{file}", self.ui_file, methods=["GET", "HEAD"]),
        ]

    async def list_queue(self, request: Request) -> Response:
        caller = _caller(request, reviewer=True)
        if isinstance(caller, Response):
            return caller
        now = time.time()
        records = []
        for record in await self.queue.pending(caller.tenant, LIST_LIMIT):
            if record.item["hold"] == "sync" and now > record.item["deadline"] + ABANDONED_S:
                await self._abandon(record, now)
            else:
                records.append(record)
        return JSONResponse({"items": [summary(r) for r in records], "now": now})

    async def _abandon(self, record: Record, now: float) -> None:
        """A sync item well past its deadline whose waiter never came back to time it out (its replica
        died): nobody waits for it any more, so it leaves the queue as timed out."""
        decision = {"action": "timeout", "outcome": "abandoned", "at": now, "by": None}
        won, _ = await self.queue.decide(record.item["tenant"], record.item["id"], "timed_out", decision)
        if won:
            self.review.metrics.decided(record.item, "timed_out", now)

    async def get_item(self, request: Request) -> Response:
        caller = _caller(request, reviewer=True)
        if isinstance(caller, Response):
            return caller
        record = await self.queue.get(caller.tenant, request.path_params["id"])
        if record is None:
            return error(404, "No such review item in this tenant's queue.", "review_not_found")
        return JSONResponse(full(record))

    async def decide(self, request: Request) -> Response:
        caller = _caller(request, reviewer=True)
        if isinstance(caller, Response):
            return caller
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("action") not in ("approve", "reject", "edit"):
            return error(400, "The body must be {action: approve | reject | edit, ...}.", "invalid_decision")
        item_id = request.path_params["id"]
        record = await self.queue.get(caller.tenant, item_id)
        if record is None:
            return error(404, "No such review item in this tenant's queue.", "review_not_found")
        action = body["action"]
        decision: dict[str, Any] = {
            "action": action,
            "by": caller.key_id,
            "role": caller.role,
            "at": time.time(),
        }
        kind = record.item["kind"]
        if action == "reject":
            reason = body.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                return error(400, "A rejection needs a reason.", "invalid_decision")
            decision["reason"] = reason.strip()[:2000]
        elif action == "edit":
            field = "arguments" if kind == "tool" else "content"
            value = body.get(field)
            if not isinstance(value, str):
                return error(400, f"An edit needs '{field}' (a string).", "invalid_decision")
            if kind == "tool":
                try:
                    json.loads(value)
                except ValueError:
                    return error(400, "The edited arguments must be JSON.", "invalid_decision")
            decision[field] = value
        status = {"approve": "approved", "reject": "rejected", "edit": "edited"}[action]
        won, current = await self.queue.decide(caller.tenant, item_id, status, decision)
        if current is None:
            return error(404, "No such review item in this tenant's queue.", "review_not_found")
        if not won:
            by = (current.decision or {}).get("by") or "the timeout"
            return error(
                409,
                f"This item was already decided ({current.status}, by {by}).",
                "review_conflict",
                item=full(current),
            )
        self.review.metrics.decided(current.item, status, decision["at"])
        response = JSONResponse(full(current))
        response.headers["x-gateway-audit"] = json.dumps(self._audit(current, decision))
        return response

    @staticmethod
    def _audit(record: Record, decision: dict[str, Any]) -> dict[str, Any]:
        item = record.item
        out: dict[str, Any] = {
            "action": decision["action"],
            "review_id": item["id"],
            "kind": item["kind"],
            "route": item["route"],
            "request_id": item["request_id"],
            "decided_at": decision["at"],
        }
        if "reason" in decision:
            out["reason"] = decision["reason"][:500]
        if item["kind"] == "tool":
            before = str((item.get("tool_call") or {}).get("arguments") or "")
            after = decision.get("arguments")
        else:
            before = answer_text(item.get("response"))
            after = decision.get("content")
        out["before"] = _short(before)
        if after is not None:
            out["after"] = _short(str(after))
        return out

    async def client_view(self, request: Request) -> Response:
        caller = _caller(request, reviewer=False)
        if isinstance(caller, Response):
            return caller
        record = await self.queue.get(caller.tenant, request.path_params["id"])
        if record is None or (caller.role not in REVIEWERS and record.item.get("key_id") != caller.key_id):
            return error(404, "No such review.", "review_not_found")
        item = record.item
        headers = {"x-gateway-review-id": item["id"]}
        if record.status == "pending":
            body = {
                "id": item["id"],
                "status": "pending",
                "created": item["created"],
                "deadline": item["deadline"],
            }
            return JSONResponse(body, status_code=202, headers={**headers, "retry-after": "2"})
        decision = record.decision or {}
        if item["kind"] == "tool":
            return JSONResponse(
                {"id": item["id"], "status": record.status, "decision": decision}, headers=headers
            )
        if record.status in ("approved", "released"):
            return JSONResponse(item["response"], headers=headers)
        if record.status == "edited":
            return JSONResponse(
                edited_answer(item["response"], str(decision.get("content") or "")), headers=headers
            )
        if record.status == "rejected":
            reason = decision.get("reason") or ""
            return error(
                422, f"A reviewer rejected the answer: {reason}", "review_rejected", review_id=item["id"]
            )
        return error(
            504, "No reviewer decided on the answer in time.", "review_timeout", review_id=item["id"]
        )

    async def ui_file(self, request: Request) -> Response:
        name = request.path_params.get("file", "index.html")
        media = UI_FILES.get(name)
        if media is None:
            return error(404, "No such file.", "not_found")
        data = resources.files("plugins.review").joinpath("ui", name).read_bytes()
        return Response(data, media_type=media, headers=UI_HEADERS)
