"""Usage on every path: the upstream's counts when it gives them, tiktoken counts otherwise.

A non-stream body without ``usage`` is counted from the request and the body. A stream is wrapped in a
``MeteredStream`` that keeps references to the frames it passes on (no parsing) and, only if the
stream ends without upstream usage (it did not send any, it broke, or the client left), counts the
request and the text actually sent. So the normal path, where the upstream reports usage, parses
nothing extra.

An upstream's usage is vetted first (``usage_check.py``): a negative, absurd or non-numeric report
is an anomaly, recorded on the exchange (``ex.usage_anomaly``, counted and logged at settlement),
and the tokens are counted as if the upstream had reported none. The stream's usage chunk then
carries the counted usage; a non-stream body reaches the client as the upstream sent it.

The stream's usage chunk carries the gateway's cost as a top-level ``x_gateway: {"cost_usd": ...}``
field: OpenAI's ``usage`` object is left exactly as the upstream sent it and SDKs keep unknown fields.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson

from gateway.context import Exchange
from gateway.pipeline.admit import prompt_tokens
from gateway.pipeline.settle import cost_of, format_usd
from gateway.pipeline.usage_check import usage_anomaly
from gateway.providers.base import Operation, UpstreamResponse, UpstreamStream, Usage
from gateway.sse import data_frame
from gateway.tokens import count_text

log = logging.getLogger("gateway.usage")

UPSTREAM = "upstream"
COUNTED = "counted"


class UsageCounter:
    """Counts a request's tokens with tiktoken when the upstream reports none."""

    def __init__(self, operation: Operation, body: Mapping[str, Any]) -> None:
        self.operation = operation
        self.body = body

    def prompt(self, model: str) -> int:
        """The request's estimate, without the admission margin: this is a bill, not a bound."""
        return prompt_tokens(self.operation, self.body, model)

    def from_body(self, body: bytes, model: str) -> Usage:
        """Usage of a non-stream answer: the prompt estimate plus the generated text in ``body``."""
        completion = 0
        if self.operation is not Operation.EMBEDDINGS:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                data = None  # a body the client got anyway; bill the prompt at least
            choices = data.get("choices") if isinstance(data, dict) else None
            completion = _count_pieces(_message_pieces(choices), model)
        return Usage(prompt_tokens=self.prompt(model), completion_tokens=completion, estimated=True)

    def from_frames(self, frames: Iterable[bytes], model: str) -> Usage:
        """Usage of a stream: the prompt estimate plus the text of the chunks passed on."""
        pieces: dict[tuple[int, int], list[str]] = {}
        for frame in frames:
            chunk = chunk_of(frame)
            choices = chunk.get("choices") if chunk is not None else None
            for key, text in _delta_pieces(choices):
                pieces.setdefault(key, []).append(text)
        completion = _count_pieces((("".join(parts)) for parts in pieces.values()), model)
        return Usage(prompt_tokens=self.prompt(model), completion_tokens=completion, estimated=True)


def chunk_of(frame: bytes) -> dict[str, Any] | None:
    """An OpenAI SSE frame (``data: {...}\\n\\n``) back to its chunk; None if it is not one."""
    start = frame.find(b":")
    try:
        chunk = orjson.loads(frame[start + 1 :])
    except orjson.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None


def with_cost(frame: bytes, cost: Decimal) -> bytes:
    """A usage chunk with ``x_gateway.cost_usd`` added at top level; ``usage`` itself is untouched."""
    # Spliced in rather than re-serialized, so the upstream's bytes reach the client unchanged.
    payload = frame.rstrip()
    if not payload.endswith(b"}"):
        return frame
    extra = orjson.dumps({"cost_usd": format_usd(cost)})
    return payload[:-1] + b',"x_gateway":' + extra + b"}\n\n"


def _count_pieces(pieces: Iterable[str], model: str) -> int:
    return sum(count_text(text, model) for text in pieces if text)


def _message_pieces(choices: Any) -> Iterable[str]:
    """Content, legacy ``text`` and tool-call arguments of a non-stream answer's choices."""
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            yield choice["text"]
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        if isinstance(message.get("content"), str):
            yield message["content"]
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                yield function["arguments"]


def _delta_pieces(choices: Any) -> Iterable[tuple[tuple[int, int], str]]:
    """A chunk's text fragments keyed by (choice, part): part -1 is content, k is tool call k.

    Fragments are joined per key before counting, since tokens span fragment boundaries.
    """
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        index = _index(choice.get("index"))
        if isinstance(choice.get("text"), str):
            yield (index, -1), choice["text"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        if isinstance(delta.get("content"), str):
            yield (index, -1), delta["content"]
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            function = call.get("function")
            k = _index(call.get("index"))
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                yield (index, k), function["arguments"]


def _index(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _upstream_model(ex: Exchange) -> str | None:
    deployment = ex.attempts.deployment
    return deployment.upstream if deployment is not None else None


def vetted(ex: Exchange, usage: Usage, counter: UsageCounter) -> bool:
    """Whether an upstream's usage may be priced; an anomaly is recorded on ``ex`` and logged."""
    deployment = ex.attempts.deployment
    kind = usage_anomaly(usage, counter.operation, counter.body, deployment)
    if kind is None:
        return True
    ex.usage_anomaly = kind
    log.warning(
        "request %s: upstream %s reported unusable usage (%s): prompt=%r completion=%r cached=%r "
        "cache_write=%r; counting the tokens instead",
        ex.request_id,
        deployment.name if deployment is not None else None,
        kind,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
    )
    return False


def response_usage(ex: Exchange, upstream: UpstreamResponse, counter: UsageCounter) -> None:
    """Set ``ex.usage`` and ``ex.usage_source`` for a non-stream answer."""
    reported = upstream.usage
    if reported is not None and vetted(ex, reported, counter):
        ex.usage, ex.usage_source = reported, UPSTREAM
        return
    model = _upstream_model(ex)
    if model is not None:
        ex.usage = _counted(lambda: counter.from_body(upstream.body, model))
        ex.usage_source = COUNTED if ex.usage is not None else None
    if reported is not None:
        upstream.usage = ex.usage  # what a cache entry keeps: the counts the gateway stands by


def _counted(count: Callable[[], Usage]) -> Usage | None:
    """Run a count; a failure is logged and bills nothing rather than lose the settlement."""
    try:
        return count()
    except Exception:  # a tokenizer or parsing bug must not keep the reservation held
        log.exception("counting usage failed")
        return None


class MeteredStream:
    """An ``UpstreamStream`` whose usage is never missing once it ends, priced in its usage chunk.

    Frames are only referenced, not parsed, while they flow: parsing happens in ``finish`` and only
    when the upstream gave no usage. ``finish`` runs when iteration ends (so the usage chunk the
    ingress reads next is final) and again from the proxy when the stream closes for any other
    reason; it acts once. With ``keep``, the frames of a stream that ran to its end stay in ``kept``
    (for the response cache).
    """

    def __init__(
        self, inner: UpstreamStream, ex: Exchange, counter: UsageCounter, *, keep: bool = False
    ) -> None:
        self.inner = inner
        self._keep = keep
        self.kept: tuple[bytes, ...] | None = None
        self._ex = ex
        self._counter = counter
        self._frames: list[bytes] = []
        self._first: bytes | None = None
        self._finished = False
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for frame in self.inner:
            self._frames.append(frame)
            yield frame
        if self._keep:  # not reached when the upstream raised or the client left
            self.kept = tuple(self._frames)
        self.finish()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def finish(self) -> None:
        """Settle on this stream's usage: the upstream's, or counted from what was sent."""
        if self._finished:
            return
        self._finished = True
        ex = self._ex
        usage = self.inner.usage
        if usage is not None and not vetted(ex, usage, self._counter):
            # the upstream's usage chunk is not passed on: a synthesized one carries the count
            usage = self.inner.usage = self.inner.usage_frame = None
        if usage is not None:
            ex.usage_source = UPSTREAM
        elif self._frames and (model := _upstream_model(ex)) is not None:
            # Nothing sent means nothing generated that the client saw: an upstream that failed
            # before its first chunk is not billed, like a failed non-stream request.
            frames = self._frames
            usage = _counted(lambda: self._counter.from_frames(frames, model))
            ex.usage_source = COUNTED if usage is not None else None
        self._first = self._frames[0] if self._frames else None
        self._frames = []
        self.usage = ex.usage = usage
        if usage is not None:
            self.usage_frame = self._priced_frame(usage)

    def _priced_frame(self, usage: Usage) -> bytes | None:
        """The usage chunk with the gateway's cost, synthesized if the upstream sent none."""
        deployment = self._ex.attempts.deployment
        if deployment is None:
            return self.inner.usage_frame
        frame = self.inner.usage_frame
        if frame is None or chunk_of(frame) is None:
            chunk = {**self._envelope(), "choices": [], "usage": usage.to_openai()}
            frame = data_frame(orjson.dumps(chunk))
        return with_cost(frame, cost_of(usage, deployment.price))

    def _envelope(self) -> dict[str, Any]:
        """id/object/created/model of the stream's chunks, so a synthesized chunk matches them."""
        first = chunk_of(self._first) if self._first is not None else None
        if first is None:
            return {"object": "chat.completion.chunk"}
        return {k: first[k] for k in ("id", "object", "created", "model", "system_fingerprint") if k in first}
