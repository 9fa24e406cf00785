"""OpenAI's ``POST /v1/responses``: Responses format in, any provider out (through the chat pipeline),
Responses format back, streamed as OpenAI's event sequence.

Stored conversations: once the tenant is known and the route chosen, the pipeline calls ``restore``
(with ``previous_response_id``, the stored chain, kept within the route's ``memory``, goes ahead of
this turn's input), and once answered ``remember`` (``store`` true, the default). The turn is stored
BEFORE the client has the whole answer (the JSON body, or the stream's last event): a client that
continues at once, on any replica, finds it. A failed turn is not kept.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import orjson

from gateway.context import Exchange
from gateway.errors import GatewayError, render_openai
from gateway.handlers.endpoint import ProxyEndpoint
from gateway.ingress.responses import Echo, to_chat_request, to_response
from gateway.ingress.responses_stream import StreamTranslator
from gateway.providers.base import Operation, UpstreamResponse, UpstreamStream
from gateway.responses_api import conversation
from gateway.responses_api.store import StoredResponse
from gateway.responses_api.turn import Turns
from gateway.runtime import Runtime
from gateway.tokens import count_chat


class ResponsesIngress:
    """One request's view: the chat form for the pipeline, the Responses form for the client."""

    __slots__ = (
        "_body",
        "_final",
        "_stored",
        "_translator",
        "chain",
        "created_at",
        "echo",
        "input_items",
        "response_id",
    )

    stateful = True
    """The pipeline calls ``restore`` once the caller is known and ``remember`` once answered."""

    def __init__(self) -> None:
        self.response_id = "resp_" + uuid.uuid4().hex
        self.created_at = int(time.time())
        self.echo: Echo | None = None
        self.input_items: list[dict[str, Any]] = []
        self._translator: StreamTranslator | None = None
        self._body: dict[str, Any] = {}
        self._final: dict[str, Any] | None = None
        self._stored: tuple[Turns, Exchange, int] | None = None
        """Set by ``restore`` when this turn is to be stored: where, for whom, for how long."""
        self.chain: Sequence[StoredResponse] = ()
        """The stored turns before this one (``previous_response_id``), oldest first, once restored."""

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        chat, self.echo, self.input_items = to_chat_request(body)
        self._body = body
        if not chat["messages"] and self.echo.hosted:
            # An input of approvals only: the conversation they answer comes with ``restore``, after the
            # first parse, which needs a message; this one stands in until then (and is never sent).
            chat["messages"] = [{"role": "user", "content": ""}]
        return chat

    @property
    def hosted(self) -> bool:
        """The request has ``mcp`` tools: the gateway runs the tool loop (``gateway/hosted``)."""
        return bool(self.echo is not None and self.echo.hosted)

    @property
    def raw(self) -> dict[str, Any]:
        """The request body as the client sent it."""
        return self._body

    async def restore(self, ex: Exchange, runtime: Runtime, turns: Turns) -> dict[str, Any] | None:
        """The chat body with the stored conversation in front (``previous_response_id``), kept within
        the route's ``memory``; None when there is nothing to add. Called after authentication and
        routing (the chain is the tenant's; the memory policy the route's)."""
        echo = self.echo
        assert echo is not None
        ttl_s = runtime.routes.defaults.response_retention_s
        if echo.store:
            self._stored = (turns, ex, ttl_s)
        previous = echo.previous_response_id
        if previous is None:
            return None
        if turns.store is None:
            raise conversation.unknown(previous)
        chain = await conversation.load_chain(turns.store, ex.tenant, previous)
        self.chain = chain
        plan = ex.plan
        memory = next((r.memory for r in runtime.routes.routes if plan and r.name == plan.route), None)
        body = self._body
        window, summarize = None, None
        if memory is not None:
            window = memory.max_input_tokens

            async def summarize(items: list[dict[str, Any]]) -> str:
                assert memory is not None
                max_tokens = min(1024, memory.max_input_tokens // 4)
                return await turns.summarize(ex, memory.summarizer, items, max_tokens)

        elif echo.truncation == "auto" and plan is not None:
            # No memory: auto truncation keeps the input within the smallest context window it may use.
            windows = [d.context_window for d in plan.candidates if d.context_window is not None]
            window = min(windows) - (echo.max_output_tokens or 0) if windows else None

        def count(items: list[dict[str, Any]]) -> int:
            chat = to_chat_request({**body, "input": items})[0]
            return count_chat(chat["messages"], echo.model, chat.get("tools"))

        restored = await conversation.restore(
            turns.store,
            chain,
            self.input_items,
            window=window,
            truncation=echo.truncation,
            count=count,
            summarize=summarize,
            ttl_s=ttl_s,
        )
        ex.memory = restored.note
        return to_chat_request({**body, "input": restored.items})[0]

    async def remember(self, response: dict[str, Any] | None = None) -> None:
        """Store this turn (``store`` is not false; ``response``: the Response object, by default the
        one ``response`` rendered), before the client sees its end: a next turn sent at once, to any
        replica, finds it."""
        response = response if response is not None else self._final
        if self._stored is None or response is None:
            return
        turns, ex, ttl_s = self._stored
        stored = StoredResponse(
            id=self.response_id,
            tenant=ex.tenant,
            created_at=self.created_at,
            previous_response_id=self.echo.previous_response_id if self.echo else None,
            input_items=conversation.normalized(self.input_items, self.response_id[5:21]),
            response=response,
            deployment=ex.model,
        )
        await turns.remember(stored, ttl_s)

    def modified(self, request: dict[str, Any]) -> dict[str, Any]:
        """Hooks see and change the chat form; the answer still echoes what the client asked."""
        return request

    def forward_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {}

    def response(self, upstream: UpstreamResponse) -> bytes:
        assert self.echo is not None  # request() ran: nothing is dispatched before it
        answer = orjson.loads(upstream.body)
        final = to_response(answer, response_id=self.response_id, created_at=self.created_at, echo=self.echo)
        self._final = final
        return orjson.dumps(final)

    async def stream(self, upstream: UpstreamStream, include_usage: bool) -> AsyncIterator[bytes]:
        translator = self._stream_translator()
        async for frame in upstream:
            chunk = _chunk(frame)
            if chunk is not None:
                for out in translator.feed(chunk):
                    yield out
        if upstream.usage_frame is not None and (chunk := _chunk(upstream.usage_frame)) is not None:
            for out in translator.feed(chunk):
                yield out
        last = translator.finish()
        await self.remember(translator.final)  # stored before the client reads response.completed
        for out in last:
            yield out

    def _stream_translator(self) -> StreamTranslator:
        if self._translator is None:
            assert self.echo is not None
            self._translator = StreamTranslator(
                response_id=self.response_id, created_at=self.created_at, echo=self.echo
            )
        return self._translator

    def error(self, err: GatewayError) -> bytes:
        return render_openai(err)

    def stream_error(self, err: GatewayError) -> bytes:
        self._final = None  # a failed turn is not kept
        return self._stream_translator().fail(err.message, err.code)


def _chunk(frame: bytes) -> dict[str, Any] | None:
    """An OpenAI SSE frame (``data: {...}\\n\\n``) back to its chunk object; None for ``[DONE]``."""
    payload = frame[frame.index(b":") + 1 :].strip()
    if payload == b"[DONE]":
        return None
    chunk = orjson.loads(payload)
    return chunk if isinstance(chunk, dict) else None


responses = ProxyEndpoint("/v1/responses", Operation.CHAT, ResponsesIngress)
