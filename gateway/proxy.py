"""The request pipeline, its stages in the one order DESIGN.md gives them.

    parse → authenticate → route → admit → plugins (pre) → cache → gate → dispatch → plugins (post) → settle

An ``Ingress`` adapts the pipeline to a wire format: OpenAI's endpoints use it as is, Anthropic's
``/v1/messages`` translates its body in and the answers (JSON, stream, errors) back out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from gateway import otel
from gateway.context import Exchange, Traced
from gateway.errors import BadRequest, GatewayError, Overloaded, ServerError
from gateway.ledger import Ledger, row_of
from gateway.metrics import Metrics
from gateway.pipeline.admit import ratelimit_headers
from gateway.pipeline.auth import authenticate, for_proxy
from gateway.pipeline.cache import (
    CachedAnswer,
    CachedStream,
    ResponseCache,
    canonical_key,
    is_cacheable,
    usable,
)
from gateway.pipeline.content_log import content_for_log
from gateway.pipeline.dispatch import Dispatcher
from gateway.pipeline.later import Later
from gateway.pipeline.overload import Gate
from gateway.pipeline.parse import Incoming, ParsedRequest, json_object, parse
from gateway.pipeline.settle import format_usd, price_usage, settle
from gateway.pipeline.spend import Settler, cost_nano
from gateway.pipeline.usage import MeteredStream, UsageCounter, response_usage, with_cost
from gateway.plugins import flow
from gateway.plugins.answers import annotate, keep_transport
from gateway.plugins.hooks import Target
from gateway.plugins.stage import Caller, HookStage
from gateway.providers.base import NativeRequest, Operation, UpstreamResponse, UpstreamStream
from gateway.responses import Reply
from gateway.responses_api.turn import Turns
from gateway.runtime import Runtime
from gateway.store.base import CacheLookup

if TYPE_CHECKING:  # the hosted loop is imported by the first request that uses it
    from gateway.hosted.backend import HostedTools

log = logging.getLogger("gateway")


class RuntimeSource(Protocol):
    @property
    def runtime(self) -> Runtime: ...


class Ingress(Protocol):
    """A wire format's view of one request: translate in, render out."""

    stateful: bool
    """True for ``/v1/responses`` (a ``StatefulIngress``): stored turns, ``previous_response_id``."""

    native: NativeRequest | None
    """The body in the client's own wire format, for deployments that speak it (set by ``request``);
    None for OpenAI's endpoints, whose OpenAI form is the client's."""

    def request(self, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        """The OpenAI form of the client's body (``raw``: its bytes as sent)."""
        ...

    def modified(self, request: dict[str, Any]) -> dict[str, Any]:
        """The body to go on with after a pre hook replaced ``request`` (OpenAI form)."""
        ...

    def forward_headers(self, headers: Mapping[str, str]) -> dict[str, str]: ...

    def response(self, upstream: UpstreamResponse) -> bytes: ...

    def stream(self, upstream: UpstreamStream, include_usage: bool) -> AsyncIterator[bytes]: ...

    def error(self, err: GatewayError) -> bytes: ...

    def stream_error(self, err: GatewayError) -> bytes: ...


class StatefulIngress(Ingress, Protocol):
    @property
    def hosted(self) -> bool:
        """The request names hosted MCP tools: the tool loop answers it (``gateway/hosted``)."""
        ...

    async def restore(self, ex: Exchange, runtime: Runtime, turns: Turns) -> dict[str, Any] | None:
        """The body with the stored conversation in front, or None to go on with it as it is."""
        ...

    async def remember(self) -> None:
        """Store the answer just rendered by ``response`` (if the request asked to)."""
        ...


class Pipeline:
    def __init__(
        self,
        source: RuntimeSource,
        metrics: Metrics,
        settler: Settler,
        gate: Gate,
        cache: ResponseCache,
        hooks: HookStage | None = None,
        turns: Turns | None = None,
        *,
        ledger: Ledger | None = None,
        tools: HostedTools | None = None,
    ) -> None:
        self._source = source
        self._turns = turns or Turns(None, None)
        self._turns.bind(self.handle)
        self._hooks = hooks
        self._metrics = metrics
        self._settler = settler
        self._ledger = ledger
        self._gate = gate
        self._cache = cache
        self._tasks: set[asyncio.Task[None]] = set()
        self._puts: set[asyncio.Future[None]] = set()
        self._later = Later()
        self._tools = tools
        """Hosted MCP tools in ``/v1/responses`` (``gateway/hosted``); None: refused."""

    async def handle(
        self, request: Incoming, operation: Operation, ingress: Ingress, deadline: float | None = None
    ) -> Reply:
        """One request through the stages below. ``deadline`` (monotonic) caps the route's ``timeout_s``:
        the gateway's own requests pass it (a hosted-tool loop's model step ends by the loop's wall time)."""
        headers = request.headers
        ex = Exchange(
            endpoint=request.path,
            trace=headers.get("x-gateway-trace"),
            client_retry=headers.get("x-stainless-retry-count"),
        )
        if self._metrics.spans is not None:  # tracing on: the caller's trace context, for the span
            ex.traced = Traced(headers.get("traceparent"), headers.get("tracestate"))
        runtime = self._source.runtime
        try:
            # 1 parse
            raw = await request.body(runtime.routes.defaults.max_body_bytes)
            body = ingress.request(json_object(raw), raw)
            parsed = parse(operation, body, headers)
            ex.model_requested, ex.stream = parsed.model, parsed.stream
            if self._ledger is not None:
                ex.user = end_user(headers, body)
            # 2 authenticate
            ex.principal = for_proxy(authenticate(headers, runtime.keys))
            # 3 route
            ex.plan = runtime.router.plan(parsed.model, parsed.task, ex.principal)
            if ingress.stateful:  # /v1/responses: the stored conversation, now that the tenant is known
                stateful = cast(StatefulIngress, ingress)
                restored = await stateful.restore(ex, runtime, self._turns)
                if restored is not None:
                    body = restored
                    parsed = parse(operation, body, headers)
                if stateful.hosted:  # mcp tools: the loop, each model step a request of its own
                    return await self._hosted(ex, stateful, body, headers, runtime)
            # None unless the route has plugins: then stages 5 and 8 cost this request nothing.
            hooks = ex.plan.hooks
            if hooks is not None and operation is Operation.EMBEDDINGS:
                hooks = None  # hooks speak chat and completions only
            if hooks is not None and hooks.post and parsed.stream and ingress.native is not None:
                ingress.native.enabled = False  # post hooks read a stream's OpenAI chunks: translated
            # The cache lookup (stage 6) is sent now, so that it shares admission's store round-trip
            # (the store writes commands of one event-loop turn together); its answer is used only
            # once the request is admitted. ``max_tokens`` that admission may add is not part of the key.
            # On a route with plugins it waits for the pre hooks, which may change the request.
            forwarded = ingress.forward_headers(headers)
            if hooks is None:
                cache_key, lookup = self._start_lookup(ex, ingress, headers, operation, parsed, forwarded)
            else:
                cache_key, lookup = None, None
            # 4 admit: rate limits and the budget reservation, one store round-trip; reserve() sends
            # it, and the upstream call (7) is prepared while it is on its way.
            try:
                admitting = runtime.admitter.reserve(
                    ex.request_id, ex.principal, parsed, ex.plan, time.time()
                )
                dispatcher = Dispatcher(
                    providers=runtime.providers,
                    operation=operation,
                    body=parsed.body,
                    headers=forwarded,
                    plan=ex.plan,
                    deadline=(
                        time.monotonic() + ex.plan.timeout_s
                        if deadline is None
                        else min(deadline, time.monotonic() + ex.plan.timeout_s)
                    ),
                    attempts=ex.attempts,
                    resilience=runtime.resilience,
                    prompt_tokens=parsed.prompt_tokens,
                    native=ingress.native,
                )
                dispatcher.prepare()
                ex.reservation = await admitting
            except BaseException:
                if lookup is not None:
                    lookup.cancel()  # its reply, when it comes, is dropped
                raise
            if (reservation := ex.reservation) is not None:
                ex.limit_headers = ratelimit_headers(reservation.admission.states, reservation.ask.scopes)
            # 5 plugins (pre)
            caller = None
            if hooks is not None:
                caller = self._stage().caller(ex, headers, dispatcher.deadline)
                if hooks.pre:
                    done = await self._pre(ex, ingress, headers, hooks.pre, caller, parsed, dispatcher)
                    if isinstance(done, Reply):  # a plugin answered
                        return done
                    parsed, dispatcher = done
                if hooks.post:
                    # A hit would skip the post hooks, and what they do may be this request's alone
                    # (guard's mask puts back this caller's values): such routes are not cached.
                    ex.cache = "off"
                else:
                    cache_key, lookup = self._start_lookup(ex, ingress, headers, operation, parsed, forwarded)
            # 6 cache: exact-match lookup, tenant-scoped
            if lookup is None:
                if ex.cache != "off":  # the cache does not apply: nothing to count
                    self._cache.count(ex.cache)  # skip (asked) or refresh, counted once admitted
                cached = None
            else:
                cached = await self._finish_lookup(ex, cache_key, lookup, ingress.native)
            if cached is not None:
                hit = self._hit(ex, ingress, cached, parsed.include_usage)
                if ingress.stateful and hit.frames is None:
                    await cast(StatefulIngress, ingress).remember()
                return hit
            # 7 dispatch (prepared above)
            # The previous answers' bookkeeping runs while this request waits for its upstream.
            self._later.request_waits()
            # Shed here rather than queue without bound; the admission reservation is released by the
            # settlement that ``_error`` schedules, like any other refusal.
            if not await self._gate.acquire(runtime.routes.defaults.queue_timeout_s):
                raise Overloaded("This gateway replica is at its upstream concurrency limit; retry shortly.")
            if parsed.stream:
                try:
                    upstream_stream: UpstreamStream = await dispatcher.open_stream()
                except BaseException:
                    self._gate.release()
                    raise
                after = None  # a stream's audit hooks, run when it ended
                if hooks is not None and hooks.post:
                    assert caller is not None  # 8 plugins (post), buffered or audited
                    upstream_stream, after = await flow.post_stream(
                        self._stage(), ex, caller, hooks, parsed, upstream_stream, self._gate
                    )
                # Outermost, so the ingress reads the priced (or synthesized) usage chunk at the end;
                # it keeps the frames for the cache, and ``_end_stream`` stores them if it ran to its end.
                store_as = None
                if cache_key is not None and ex.plan.cache is not None:
                    native = ingress.native
                    served = native.format if native is not None and native.served else None
                    store_as = (cache_key, ex.plan.cache.ttl_s, served)
                metered = MeteredStream(
                    upstream_stream, ex, UsageCounter(operation, parsed.body), keep=store_as is not None
                )
                if ex.plan.log_content is not None:  # opt-in content logging: the prompt only, for streams
                    ex.content = content_for_log(ex.plan.log_content, parsed.body, None)
                # From here the slot is the stream's: ``_stream`` gives it back when the upstream closes.
                deadline = dispatcher.deadline
                frames = self._stream(ex, ingress, metered, parsed.include_usage, store_as, deadline, after)
                # A client gone before the first frame never starts ``frames``; on_close still cleans up.
                on_close = functools.partial(self._end_stream, ex, metered, store_as, after)
                return Reply(200, ex.response_headers(), frames=frames, after=on_close, deadline=deadline)
            try:
                upstream = await dispatcher.send()
            finally:
                self._gate.release()
            billed = upstream  # what the upstream answered is what is billed and counted
            # 8 plugins (post)
            if hooks is not None and hooks.post and upstream.status == 200:
                assert caller is not None
                upstream = await flow.post(self._stage(), ex, caller, hooks.post, parsed, upstream)
            body_out = ingress.response(upstream)
            if ingress.stateful:
                await cast(StatefulIngress, ingress).remember()
            if caller is not None and caller.annotations:
                body_out = annotate(body_out, caller.annotations)
            if ex.plan.log_content is not None:  # opt-in content logging (gateway/pipeline/content_log.py)
                ex.content = content_for_log(ex.plan.log_content, parsed.body, upstream.body)
        except GatewayError as err:
            return self._error(ex, ingress, err)
        except Exception:  # a bug must not leave a reservation held until its lease runs out
            log.exception("request %s failed", ex.request_id)
            failure = ServerError("The gateway hit an internal error.", code="internal_error")
            return self._error(ex, ingress, failure)
        # 9 settle: the cost header is known now; metrics and the log line go after the response.
        response_usage(ex, billed, UsageCounter(operation, parsed.body))
        if ex.traced is not None:
            ex.traced.finish_reasons = otel.finish_reasons(billed.body)
        price_usage(ex)
        out = ex.response_headers()
        out["x-gateway-cost-usd"] = format_usd(ex.cost)
        entry = None
        if (
            cache_key is not None
            and ex.plan is not None
            and ex.plan.cache is not None
            and upstream.status == 200
        ):
            # the answer as the post hooks left it: a hit skips them, so it must be what they passed;
            # a native answer is kept as the upstream sent it, for clients of its format only
            if upstream.native is not None and ingress.native is not None:
                answer = CachedAnswer(
                    ex.model, billed.usage, body=upstream.native, native=ingress.native.format
                )
            else:
                answer = CachedAnswer(ex.model, billed.usage, body=upstream.body)
            entry = (cache_key, answer, ex.plan.cache.ttl_s)
        return Reply(200, out, body_out, after=functools.partial(self._settle, ex, entry))

    async def _hosted(
        self,
        ex: Exchange,
        ingress: StatefulIngress,
        body: dict[str, Any],
        headers: Mapping[str, str],
        runtime: Runtime,
    ) -> Reply:
        from gateway.hosted.run import HostedIngress, respond  # loaded by the first hosted request

        if self._tools is None:
            raise BadRequest("Hosted MCP tools are not available on this gateway.", param="tools")
        after = functools.partial(self._settle, ex)
        hosted = cast(HostedIngress, ingress)
        return await respond(
            self._tools,
            ex,
            runtime,
            hosted,
            body,
            headers,
            self._turns,
            self._hooks,
            self._ledger,
            after,
            self._later.release,
        )

    def _stage(self) -> HookStage:
        assert self._hooks is not None, "a route with plugins needs the pipeline's hook stage"
        return self._hooks

    async def _pre(
        self,
        ex: Exchange,
        ingress: Ingress,
        headers: Mapping[str, str],
        targets: tuple[Target, ...],
        caller: Caller,
        parsed: ParsedRequest,
        dispatcher: Dispatcher,
    ) -> Reply | tuple[ParsedRequest, Dispatcher]:
        """Stage 5: a plugin's answer, or the request (and its dispatcher) as the pre hooks left it."""
        outcome = await self._stage().pre(caller, targets, parsed.body)
        if outcome.response is not None:
            return self._respond(ex, ingress, outcome.response, parsed.include_usage, caller)
        if outcome.modified_by is None:
            return parsed, dispatcher
        try:
            body = ingress.modified(keep_transport(parsed.body, outcome.request))
            parsed = parse(parsed.operation, body, headers)
        except BadRequest as err:  # the plugin's request, not the client's: its on_error decides
            self._stage().broken(outcome.modified_by, "pre", err.message)
            return parsed, dispatcher
        # same deadline: the hooks' time counts against the request's
        return parsed, dataclasses.replace(
            dispatcher, body=parsed.body, prompt_tokens=parsed.prompt_tokens, prepared=None
        )

    def _respond(
        self, ex: Exchange, ingress: Ingress, answer: dict[str, Any], include_usage: bool, caller: Caller
    ) -> Reply:
        """A pre hook answered: rendered like a fresh answer (a stream if asked). Like a cache hit it
        costs 0 and records no tokens: the plugin's own model calls were billed as delegated requests."""
        headers = ex.response_headers()
        if ex.stream:
            replay = CachedStream(flow.respond_answer(answer))
            frames = self._stream(ex, ingress, replay, include_usage)
            return Reply(200, headers, frames=frames, after=functools.partial(self._end_stream, ex, replay))
        headers["x-gateway-cost-usd"] = "0"
        body = ingress.response(UpstreamResponse(orjson.dumps(answer), None))
        if caller.annotations:
            body = annotate(body, caller.annotations)
        return Reply(200, headers, body, after=functools.partial(self._settle, ex))

    def _start_lookup(
        self,
        ex: Exchange,
        ingress: Ingress,
        headers: Mapping[str, str],
        operation: Operation,
        parsed: ParsedRequest,
        forwarded: dict[str, str],
    ) -> tuple[str | None, CacheLookup | None]:
        """Stage 6, begun: the key to store this answer under (None: do not store) and the lookup.

        ``x-gateway-cache`` says ``hit`` or ``miss`` when a lookup happened, ``refresh`` when the client
        asked to replace the entry (no lookup, the fresh answer is stored), ``skip`` when the client
        opted out, and ``off`` when the cache does not apply (the route has none, or the request is not
        cacheable): in those two the store is not called at all.
        """
        plan = ex.plan
        asked = headers.get("x-gateway-cache")
        if plan is None or not is_cacheable(plan.cache, operation, parsed.body):
            ex.cache = "off"
            return None, None
        if asked == "skip":
            ex.cache = "skip"
            return None, None
        native = ingress.native
        key = canonical_key(
            ex.tenant,
            operation,
            parsed.body,
            route=plan.route,
            headers=forwarded,
            native=native.body if native is not None and native.enabled else None,
        )
        if asked == "refresh":
            ex.cache = "refresh"
            return key, None
        return key, self._cache.lookup(key)

    async def _finish_lookup(
        self, ex: Exchange, key: str | None, lookup: CacheLookup, native: NativeRequest | None
    ) -> CachedAnswer | None:
        """Stage 6, ended: the stored answer, if there is one this request may use."""
        assert key is not None
        answer = await self._cache.answer(lookup, key)
        assert ex.plan is not None
        if answer is not None and answer.native is not None:
            # an answer in a client wire format goes only to a client of that format
            if native is None or native.format != answer.native:
                answer = None
            else:
                native.served = True
        # the stored deployment must still be one this key may use on this route
        deployment = usable(answer, ex.plan.candidates) if answer is not None else None
        ex.cache = "miss" if deployment is None else "hit"
        self._cache.count(ex.cache)
        if deployment is None:
            return None
        ex.attempts.deployment = deployment
        return answer

    def _hit(self, ex: Exchange, ingress: Ingress, answer: CachedAnswer, include_usage: bool) -> Reply:
        """Answer from the cache, rendered like a fresh answer. A hit costs 0 and records no tokens:
        ``ex.usage`` stays None, so settlement only releases the admission reservation."""
        headers = ex.response_headers()
        if answer.body is None:
            replay = CachedStream(answer)
            if replay.usage_frame is not None:
                replay.usage_frame = with_cost(replay.usage_frame, Decimal(0))
            frames = self._stream(ex, ingress, replay, include_usage)
            on_close = functools.partial(self._end_stream, ex, replay)
            return Reply(200, headers, frames=frames, after=on_close)
        headers["x-gateway-cost-usd"] = "0"
        if ex.traced is not None:
            ex.traced.finish_reasons = otel.finish_reasons(answer.body)
        native = answer.body if answer.native is not None else None
        body = ingress.response(UpstreamResponse(answer.body, answer.usage, native=native))
        return Reply(200, headers, body, after=functools.partial(self._settle, ex))

    async def _settle(
        self,
        ex: Exchange,
        entry: tuple[str, CachedAnswer, int] | None = None,
        audit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """After the answer: the cache put at once (the client's next request may ask the same), then,
        at the next quiet moment (``Later``), the metrics, the log line and the settlement. ``audit``
        (the audit hooks of a finished stream) runs first, so their annotations are in the log line."""
        self._put(entry)
        if audit is not None:
            await audit()
        await self._later.turn()
        settle(ex, self._metrics)
        if ex.attempts.retries:
            self._metrics.retries.inc(ex.attempts.retries)
        # A deque append: the writer thread does the rest. A request that never authenticated has no
        # tenant to charge (and costs 0): no row, or anyone could fill the ledger.
        if self._ledger is not None and ex.principal is not None:
            self._ledger.record(row_of(ex, cost_nano(ex.cost, ex.request_id), time.time()))
        await self._settler.settle(ex)

    def _error(self, ex: Exchange, ingress: Ingress, err: GatewayError) -> Reply:
        ex.status, ex.error_code = err.status, err.code
        headers = {**ex.response_headers(), **err.headers}
        return Reply(err.status, headers, ingress.error(err), after=functools.partial(self._settle, ex))

    async def _stream(
        self,
        ex: Exchange,
        ingress: Ingress,
        upstream: UpstreamStream,
        include_usage: bool,
        store_as: tuple[str, int, str | None] | None = None,
        deadline: float | None = None,
        after: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        try:
            first = True
            async for frame in ingress.stream(upstream, include_usage):
                if first:
                    ex.ttft_s = time.perf_counter() - ex.started
                    first = False
                yield frame
        except GatewayError as err:
            ex.status, ex.error_code = err.status, err.code
            yield ingress.stream_error(err)
        except (GeneratorExit, asyncio.CancelledError):
            if deadline is not None and time.monotonic() >= deadline:  # a client that stopped reading
                ex.status, ex.error_code = 504, "deadline_exceeded"
            else:
                ex.status, ex.error_code = 499, "client_closed"
            raise
        except Exception as exc:  # a stream must end with an error event, whatever broke
            log.exception("stream failed")
            failure = ServerError(f"The stream failed: {type(exc).__name__}", code="stream_failed")
            ex.status, ex.error_code = failure.status, failure.code
            yield ingress.stream_error(failure)
        finally:
            await self._end_stream(ex, upstream, store_as, after)

    async def _end_stream(
        self,
        ex: Exchange,
        upstream: UpstreamStream,
        store_as: tuple[str, int, str | None] | None = None,
        after: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Close the upstream, free the slot, cache a complete answer (``store_as``: key and TTL),
        settle: once, whether or not the stream ever started."""
        if ex.stream_ended:
            return
        ex.stream_ended = True
        if isinstance(upstream, CachedStream):
            # a replay never took an upstream slot, and records no tokens (a hit costs 0)
            self._background(self._settle(ex))
            return
        try:
            await upstream.aclose()
        finally:
            self._gate.release()
        if isinstance(upstream, MeteredStream):
            # a stream cut short (client gone, upstream broke) is billed for what was sent so far
            upstream.finish()
            if store_as is not None and upstream.kept is not None and ex.status == 200:
                inner = upstream.inner  # the upstream's own usage and usage chunk, not the priced ones
                answer = CachedAnswer(
                    ex.model,
                    inner.usage,
                    frames=upstream.kept,
                    usage_frame=inner.usage_frame,
                    native=store_as[2],
                )
                self._put((store_as[0], answer, store_as[1]))
        ex.usage = upstream.usage
        # Not awaited here: the client's stream closes without waiting for the store.
        self._background(self._settle(ex, None, after if ex.status == 200 else None))

    def _put(self, entry: tuple[str, CachedAnswer, int] | None) -> None:
        if entry is not None and (written := self._cache.put(*entry)) is not None and not written.done():
            self._puts.add(written)  # for ``drain``; the cache logs a failure itself
            written.add_done_callback(self._puts.discard)

    def _background(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for settlements and cache puts still running (graceful shutdown)."""
        while self._tasks or self._puts:
            await asyncio.gather(*self._tasks, *self._puts, return_exceptions=True)


def end_user(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """Who the tenant's end user is: ``x-gateway-user``, else OpenAI's ``user`` field; clipped when
    the ledger writes it."""
    user = headers.get("x-gateway-user") or body.get("user")
    return user if isinstance(user, str) and user else None
