"""The hook stages' parts of the request flow that the pipeline (gateway/proxy.py) calls on routes with
plugins: post hooks on a whole answer, a stream held for them (``buffer``) or shown to them after it
ended (``audit``), and a ``respond`` made into an answer the pipeline can render like a cache hit."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import orjson

from gateway.context import Exchange
from gateway.errors import GatewayError
from gateway.pipeline.cache import CachedAnswer
from gateway.pipeline.overload import Gate
from gateway.pipeline.parse import ParsedRequest
from gateway.pipeline.settle import cost_of, format_usd
from gateway.pipeline.usage import MeteredStream, UsageCounter, response_usage, with_cost
from gateway.plugins.answers import AuditedStream, HeldStream, assemble, frames_of, usage_frame_of
from gateway.plugins.hooks import Target
from gateway.plugins.stage import Caller, HookStage, RouteHooks
from gateway.providers.base import UpstreamResponse, UpstreamStream, Usage

log = logging.getLogger("gateway.plugins")

AUDIT_BYTES = 8 * 1024 * 1024
"""A stream longer than this is not kept for its audit hooks (the stream itself is not affected)."""


async def post(
    stage: HookStage,
    ex: Exchange,
    caller: Caller,
    targets: tuple[Target, ...],
    parsed: ParsedRequest,
    upstream: UpstreamResponse,
) -> UpstreamResponse:
    """Stage 8 on a whole answer: the answer the post hooks leave. If they refuse it (reject, or a closed
    plugin failing) the upstream's usage is still recorded first: that answer was paid for."""
    try:
        response, modified = await stage.post(
            caller, targets, parsed.body, orjson.loads(upstream.body), served(ex, upstream.usage)
        )
    except GatewayError:
        response_usage(ex, upstream, UsageCounter(parsed.operation, parsed.body))
        raise
    return UpstreamResponse(orjson.dumps(response), upstream.usage) if modified else upstream


def served(ex: Exchange, usage: Usage | None) -> dict[str, Any]:
    """What a post hook is told about the answer beyond its body: the deployment that served it and, when
    the upstream reported usage, its cost (decimal USD, as in ``x-gateway-cost-usd``)."""
    out: dict[str, Any] = {"model": ex.model}
    deployment = ex.attempts.deployment
    if usage is not None and deployment is not None:
        out["cost_usd"] = format_usd(cost_of(usage, deployment.price))
    return out


async def hold(
    stage: HookStage,
    ex: Exchange,
    caller: Caller,
    targets: tuple[Target, ...],
    parsed: ParsedRequest,
    stream: UpstreamStream,
    gate: Gate,
) -> UpstreamStream:
    """``post_stream: buffer``: the stream read to its end, the assembled answer through the post hooks,
    then the frames to send (the upstream's, or the modified answer's). On a refusal the stream is closed,
    its slot given back and what it generated recorded, then the error answers the client."""
    frames: list[bytes] = []
    try:
        async for frame in stream:
            frames.append(frame)
        held = HeldStream(frames, stream)
        response, modified = await stage.post(
            caller, targets, parsed.body, assemble(frames, stream.usage_frame), served(ex, stream.usage)
        )
    except BaseException:
        billed = MeteredStream(HeldStream(frames, stream), ex, UsageCounter(parsed.operation, parsed.body))
        async for _ in billed:  # in memory: counts what the upstream sent, never suspends
            pass
        ex.usage = billed.usage
        try:
            await stream.aclose()
        finally:
            gate.release()
        raise
    if modified:
        held.frames = frames_of(response)
    return held


async def post_stream(
    stage: HookStage,
    ex: Exchange,
    caller: Caller,
    hooks: RouteHooks,
    parsed: ParsedRequest,
    stream: UpstreamStream,
    gate: Gate,
) -> tuple[UpstreamStream, Callable[[], Awaitable[None]] | None]:
    """Stage 8 on a stream: the stream to send (held for the ``buffer`` hooks), and the job that runs
    the ``audit`` hooks once it ended (None without any)."""
    if hooks.post_buffered:
        stream = await hold(stage, ex, caller, hooks.post_buffered, parsed, stream, gate)
    if not hooks.post_audited:
        return stream, None
    return audited(stage, caller, hooks.post_audited, parsed.body, stream)


def audited(
    stage: HookStage,
    caller: Caller,
    targets: tuple[Target, ...],
    request: dict[str, Any],
    stream: UpstreamStream,
) -> tuple[UpstreamStream, Callable[[], Awaitable[None]]]:
    """``post_stream: audit``: the stream passed on as it comes, and the job that shows the finished
    answer to the audit hooks (run before the request's log line; it cannot change what was sent)."""
    kept = AuditedStream(stream, AUDIT_BYTES)
    return kept, functools.partial(_audit, stage, caller, targets, request, kept)


async def _audit(
    stage: HookStage,
    caller: Caller,
    targets: tuple[Target, ...],
    request: dict[str, Any],
    kept: AuditedStream,
) -> None:
    if not kept.complete or kept.kept is None:
        return
    answer = assemble(kept.kept, kept.usage_frame)
    for target in targets:  # each on its own: a refusal by one is recorded, the others still see it
        try:
            await stage.post(caller, (target,), request, answer)
        except GatewayError as err:
            caller.annotations.setdefault(target.name, {})["audit_outcome"] = err.code or str(err.status)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("audit hook %s failed", target.name)


def respond_answer(answer: dict[str, Any]) -> CachedAnswer:
    """A plugin's ``respond`` as stream frames, replayed like a cached stream (cost 0 in its usage chunk)."""
    return CachedAnswer(
        "none",
        None,
        frames=tuple(frames_of(answer)),
        usage_frame=with_cost(usage_frame_of(answer), Decimal(0)),
    )
