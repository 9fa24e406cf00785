"""Usage on every path: the upstream's counts when it gives them, tiktoken counts otherwise.

A non-stream body without ``usage`` is counted from the request and the body. A stream is wrapped in a
``MeteredStream`` that keeps references to the frames it passes on (no parsing) and, only if the
stream ends without upstream usage (it did not send any, it broke, or the client left), counts the
request and the text actually sent. So the normal path, where the upstream reports usage, parses
nothing extra. What it holds is bounded (``HELD_BYTES``): past it the frames held so far are counted
and let go, so a stream that never ends holds a number, not every frame it ever sent.

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

HELD_BYTES = 4 * 1024 * 1024
"""Frames a ``MeteredStream`` holds before it counts them and lets them go. Above any usual answer
(a 16k-token answer is ~3 MB of frames), so the normal stream counts once, at its end, if at all; a
stream longer than this is not cached either."""
BYTES_PER_TOKEN = 4
"""The estimate for text too long to tokenize on the event loop: frames let go, and any one text past
``EXACT_CHARS``. A tokenizer pass over megabytes of a hostile answer's text (long runs without spaces
cost tiktoken ~150 ns a byte) would stall every other request of the worker."""
EXACT_CHARS = 256 * 1024
"""Texts up to this long (~64k tokens: any usual answer) are counted exactly, longer ones estimated."""


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
        return Usage(
            prompt_tokens=self.prompt(model), completion_tokens=self.completion(frames, model), estimated=True
        )

    def completion(self, frames: Iterable[bytes], model: str) -> int:
        """The tokens of the text in the chunks ``frames``."""
        return _count_pieces(_stream_texts(frames), model)

    @staticmethod
    def estimate(frames: Iterable[bytes]) -> int:
        """The tokens of the text in the chunks ``frames``, estimated from its size (no tokenizer)."""
        size = sum(len(text.encode()) for text in _stream_texts(frames))
        return -(-size // BYTES_PER_TOKEN)


def _stream_texts(frames: Iterable[bytes]) -> Iterable[str]:
    """The text of a stream's chunks, one string per choice and part (tokens span fragments)."""
    pieces: dict[tuple[int, int], list[str]] = {}
    for frame in frames:
        chunk = chunk_of(frame)
        choices = chunk.get("choices") if chunk is not None else None
        for key, text in _delta_pieces(choices):
            pieces.setdefault(key, []).append(text)
    return ("".join(parts) for parts in pieces.values())


def chunk_of(frame: bytes) -> dict[str, Any] | None:
    """An OpenAI SSE frame (``data: {...}\\n\\n``) back to its chunk; None if it is not one."""
    start = frame.find(b":")
    try:
        chunk = orjson.loads(frame[start + 1 :])
    except orjson.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None


def stream_finish_reasons(frames: list[bytes]) -> tuple[str, ...]:
    """The ``finish_reason`` of each choice, from the chunks that carry one (for the trace span)."""
    reasons: dict[int, str] = {}
    for frame in frames:
        at = frame.find(b'"finish_reason"')
        if at < 0 or frame[at + 15 :].lstrip(b" :").startswith(b"null"):
            continue
        chunk = chunk_of(frame)
        for choice in chunk.get("choices") or () if chunk is not None else ():
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                index = choice.get("index")
                reasons[index if isinstance(index, int) else 0] = choice["finish_reason"]
    return tuple(reasons[i] for i in sorted(reasons))


def with_cost(frame: bytes, cost: Decimal) -> bytes:
    """A usage chunk with ``x_gateway.cost_usd`` added at top level; ``usage`` itself is untouched."""
    # Spliced in rather than re-serialized, so the upstream's bytes reach the client unchanged.
    payload = frame.rstrip()
    if not payload.endswith(b"}"):
        return frame
    extra = orjson.dumps({"cost_usd": format_usd(cost)})
    return payload[:-1] + b',"x_gateway":' + extra + b"}\n\n"


def _count_pieces(pieces: Iterable[str], model: str) -> int:
    return sum(_count_one(text, model) for text in pieces if text)


def _count_one(text: str, model: str) -> int:
    if len(text) > EXACT_CHARS:
        return -(-len(text.encode()) // BYTES_PER_TOKEN)
    return count_text(text, model)


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


def _counted_int(count: Callable[[], int]) -> int:
    """``_counted`` for a token count: a failure counts 0 (and is logged)."""
    try:
        return count()
    except Exception:
        log.exception("counting usage failed")
        return 0


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
    (for the response cache), unless it passed ``HELD_BYTES``: then the frames held are counted and
    dropped as it goes (``_let_go``), and the stream is not cached.
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
        self._held = 0
        self._let_go_tokens = 0
        """Completion tokens of the frames already counted and dropped."""
        self._first: bytes | None = None
        self._finished = False
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        frames = self._frames
        async for frame in self.inner:
            frames.append(frame)
            self._held += len(frame)
            if self._held > HELD_BYTES:
                self._let_go()
            yield frame
        if self._keep:  # not reached when the upstream raised or the client left
            self.kept = tuple(self._frames)
        self.finish()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _let_go(self) -> None:
        """Estimate the tokens of the frames held so far, then drop them (in place: ``__aiter__``
        holds the list). The usual stream reports usage only in its last chunk: estimated anyway, in
        case it does not."""
        self._keep = False  # too long to cache
        frames = self._frames
        if self._first is None:
            self._first = frames[0]
        if self.inner.usage is None:
            held = list(frames)
            self._let_go_tokens += _counted_int(lambda: self._counter.estimate(held))
        frames.clear()
        self._held = 0

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
        elif (self._frames or self._first is not None) and (model := _upstream_model(ex)) is not None:
            # Nothing sent means nothing generated that the client saw: an upstream that failed
            # before its first chunk is not billed, like a failed non-stream request.
            frames = self._frames
            usage = _counted(lambda: self._counter.from_frames(frames, model))
            if usage is not None:
                usage.completion_tokens += self._let_go_tokens
            ex.usage_source = COUNTED if usage is not None else None
        if self._first is None and self._frames:
            self._first = self._frames[0]
        if ex.traced is not None:  # tracing on: the last chunks carry them (frames let go came earlier)
            ex.traced.finish_reasons = stream_finish_reasons(self._frames)
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
