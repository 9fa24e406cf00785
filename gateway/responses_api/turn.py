"""The pipeline's side of a stored ``/v1/responses`` turn: load the chain, summarize, store the turn.

``Turns`` is built once per process with the response store and the delegation secret, and bound to
the pipeline (``Pipeline.handle``) so that a memory summary is a real call through the gateway: a chat
completion to the summarizer deployment, authenticated with a delegation token of the caller's tenant
and key, so it is admitted, priced, charged to the tenant and logged with ``parent_request_id`` like any
delegated call (DESIGN.md "Finance"). It is awaited inside the turn that needs it, since that turn's
input is the summary.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

import orjson

from gateway.context import Exchange
from gateway.delegation import Delegation, mint
from gateway.errors import GatewayError, ServerError
from gateway.pipeline.parse import check_size
from gateway.providers.base import Operation
from gateway.responses import Reply
from gateway.responses_api.store import ResponseStore, StoredResponse
from gateway.store.base import StoreUnavailableError

log = logging.getLogger("gateway")

SUMMARY_PROMPT = (
    "You keep the memory of a conversation between a user and an assistant. Summarize the transcript "
    "below so that the assistant can continue the conversation from the summary alone: keep names, "
    "facts, numbers, decisions, open questions, tool results and what the user wants. Be concise."
)
TOKEN_LIFETIME_S = 300
_CALLERS_OWN = frozenset({401, 402, 403, 429})
"""Summarizer refusals that are the caller's own (budget, rate limits, the key's allow-list): passed on."""


class Handle(Protocol):
    """``Pipeline.handle``: a request, its operation and ingress, and an optional deadline cap."""

    def __call__(
        self, request: Any, operation: Operation, ingress: Any, /, deadline: float | None = None
    ) -> Awaitable[Any]: ...


class _Internal:
    """A request made by the gateway to itself, as the pipeline's ``Incoming``."""

    __slots__ = ("_body", "headers", "path")

    def __init__(self, path: str, headers: Mapping[str, str], body: bytes) -> None:
        self.path = path
        self.headers = headers
        self._body = body

    async def body(self, limit: int) -> bytes:
        check_size(len(self._body), limit)
        return self._body


def transcript(items: list[dict[str, Any]]) -> str:
    """Items as plain text for the summarizer (provider-neutral: any deployment can read it)."""
    lines: list[str] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                text = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            else:
                text = str(content or "")
            lines.append(f"{item.get('role', 'user')}: {text}")
        elif kind == "function_call":
            lines.append(f"assistant called {item.get('name')}({item.get('arguments')})")
        elif kind == "function_call_output":
            lines.append(f"tool result: {item.get('output')}")
    return "\n".join(lines)


class Turns:
    def __init__(self, store: ResponseStore | None, secret: bytes | None) -> None:
        self.store = store
        self._secret = secret
        self._handle: Handle | None = None

    def bind(self, handle: Handle) -> None:
        self._handle = handle

    async def delegate(
        self,
        ex: Exchange,
        body: dict[str, Any],
        purpose: str,
        code: str,
        deadline: float | None = None,
        carried: Mapping[str, str] | None = None,
    ) -> Reply:
        """``body`` as a chat completion through the whole pipeline, made as the caller with a delegation
        token naming ``ex``'s request: admitted, priced, charged and logged (``parent_request_id``) like
        any delegated call. The reply's ``after`` (its settlement) is the caller's to await. ``deadline``
        (monotonic) ends the call sooner than its route's ``timeout_s``, as a route's own deadline would;
        ``carried`` are request headers of the caller's that the call is made with too."""
        from gateway.handlers.openai import OpenAIIngress  # the handlers import the pipeline

        principal = ex.principal
        if self._handle is None or self._secret is None or principal is None:
            raise ServerError(f"{purpose} needs GATEWAY_DELEGATION_SECRET to call its model.", code=code)
        expires = math.ceil(time.time()) + TOKEN_LIFETIME_S
        if principal.delegation_expires_at is not None:  # a delegated caller's token never outlives it
            expires = min(expires, principal.delegation_expires_at)
        token = mint(self._secret, Delegation(principal.tenant, principal.key_id, ex.request_id, expires))
        incoming = _Internal(
            "/v1/chat/completions",
            {**(carried or {}), "authorization": f"Bearer {token}", "content-type": "application/json"},
            orjson.dumps(body),
        )
        reply: Reply = await self._handle(incoming, Operation.CHAT, OpenAIIngress(), deadline)
        return reply

    async def summarize(self, ex: Exchange, model: str, items: list[dict[str, Any]], max_tokens: int) -> str:
        """One priced chat call to ``model`` as the caller; its text, or the call's error raised."""
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": SUMMARY_PROMPT},
                {"role": "user", "content": transcript(items)},
            ],
            "max_tokens": max_tokens,
        }
        reply = await self.delegate(ex, body, "Conversation memory", "memory_unavailable")
        if reply.after is not None:
            await reply.after()  # settlement and the summary call's own log line
        answer = orjson.loads(reply.body) if reply.body else {}
        if reply.status != 200:
            error = answer.get("error") or {}
            message = f"The conversation memory's summarizer failed: {error.get('message', reply.status)}"
            if reply.status in _CALLERS_OWN or reply.status >= 500:  # the tenant's limits, or an outage
                raise GatewayError(
                    message, status=reply.status, code=error.get("code"), type=error.get("type")
                )
            # Any other refusal is not the client's doing (it did not write the summary request).
            raise GatewayError(message, status=502, code="summarizer_failed", type="server_error")
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
        if not isinstance(text, str) or not text.strip():
            raise ServerError("The conversation memory's summarizer returned no text.", code="memory_failed")
        return text.strip()

    async def remember(self, stored: StoredResponse, ttl_s: int) -> None:
        """Store a turn. A store failure is logged, not raised: the answer is already paid for and
        is more use to the client than an error; only a later ``previous_response_id`` misses it."""
        if self.store is None:
            return
        try:
            await self.store.put(stored, ttl_s)
        except StoreUnavailableError:
            log.error("response %s not stored: the store is unreachable", stored.id)
