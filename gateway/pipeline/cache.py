"""Stage 6, cache: exact-match answers in the store, scoped by tenant, TTL per route.

The key is a sha256 over the canonical request: the OpenAI-format body the upstream would get (keys
sorted), minus the fields that cannot change the answer, plus the operation, the route and the
client headers forwarded upstream. The tenant is not hashed but put in the key itself, as the Redis
Cluster hash tag every other tenant key uses (``gw:{<tenant>}:cache:<sha256>``), so no lookup can
ever reach another tenant's entry.

What is stored is the answer at the OpenAI level, before an ingress renders it: a JSON body, or the
SSE frames and the usage frame of a stream. A hit is rendered by the same ingress code as a fresh
answer, so ``/v1/messages`` and base64 embeddings work unchanged. JSON and stream answers live under
different keys (``stream`` is part of the key material); a stream is never converted into a body.

The cache is an optimisation, never a dependency: a store that fails makes a lookup a miss and a put
a no-op, logged at most every ``_WARN_EVERY_S``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.config.model import CachePolicy, ModelConfig
from gateway.metrics import Metrics
from gateway.providers.base import Operation, Usage
from gateway.store.base import CacheLookup, StoreUnavailableError

log = logging.getLogger("gateway.cache")

IGNORED_FIELDS = frozenset(
    {
        "stream_options",  # providers always ask upstreams for usage; the ingress decides what is shown
        "user",  # end-user id for the provider's abuse tracking
        "safety_identifier",  # its newer name
        "metadata",  # labels for stored completions
        "store",  # whether OpenAI keeps a copy
        "service_tier",  # latency class, not content
        "prompt_cache_key",  # a provider-side prompt-cache hint
    }
)
"""Request fields that do not change the answer. Everything else (``n``, ``seed``, ``logprobs``,
``tools``, ``max_tokens``…) is part of the key: an unknown field is assumed to matter."""
_FORMAT = 1
"""Bumped when the key material or the stored layout changes, so old entries are simply missed."""
_WARN_EVERY_S = 10.0


class CacheStore(Protocol):
    """The two store methods the cache needs (``MemoryStore`` and ``RedisStore`` have them)."""

    async def cache_get(self, key: str) -> bytes | None: ...

    def cache_lookup(self, key: str) -> CacheLookup: ...

    def cache_put(self, key: str, value: bytes, ttl_s: int) -> asyncio.Future[None]:
        """Sent so that this replica's next lookup finds it; the future tells the outcome."""
        ...


def canonical_key(
    tenant: str,
    operation: Operation,
    body: Mapping[str, Any],
    *,
    route: str = "",
    headers: Mapping[str, str] | None = None,
    native: Mapping[str, Any] | None = None,
) -> str:
    """The store key of a request's answer: the same for requests that must get the same answer.

    ``native``: the client's body in its own wire format (``NativeRequest``), which may hold what the
    OpenAI form does not (``cache_control``, ``thinking``, documents): part of the key when given.
    """
    material = {
        "v": _FORMAT,
        "op": operation.value,
        "route": route,
        "stream": bool(body.get("stream")),
        "headers": dict(headers or {}),
        "body": {k: v for k, v in body.items() if k not in IGNORED_FIELDS and k != "stream"},
    }
    if native is not None:
        material["native"] = {k: v for k, v in native.items() if k not in IGNORED_FIELDS and k != "stream"}
    digest = hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"gw:{{{tenant}}}:cache:{digest}"


def is_cacheable(policy: CachePolicy | None, operation: Operation, body: Mapping[str, Any]) -> bool:
    """Whether a route's policy lets this request be cached.

    ``deterministic`` (the default) caches only what the client asked to be repeatable: temperature 0
    or a seed. Embeddings have no sampling and are always deterministic.
    """
    if policy is None:
        return False
    if policy.mode == "always" or operation is Operation.EMBEDDINGS:
        return True
    return body.get("temperature") == 0 or body.get("seed") is not None


# Built per request: a plain slotted dataclass (a frozen one costs about 1 µs more to build).
@dataclass(slots=True)
class CachedAnswer:
    """One stored answer: a JSON ``body``, or a stream's ``frames`` and ``usage_frame``."""

    deployment: str
    """The routes.yaml model that produced it (``x-gateway-model`` on a hit)."""
    usage: Usage | None
    body: bytes | None = None
    frames: tuple[bytes, ...] = ()
    usage_frame: bytes | None = None
    native: str | None = None
    """The client wire format ``body`` or ``frames`` are in, when an upstream answered in it
    (``NativeRequest``): served only to a request in that format. None: the OpenAI form."""

    def dumps(self) -> bytes:
        u = self.usage
        return orjson.dumps(
            {
                "v": _FORMAT,
                "deployment": self.deployment,
                "usage": [u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens]
                if u is not None
                else None,
                # upstream answers are UTF-8 JSON/SSE text; a body that is not fails here and is not stored
                "body": self.body.decode() if self.body is not None else None,
                "frames": [f.decode() for f in self.frames],
                "usage_frame": self.usage_frame.decode() if self.usage_frame is not None else None,
                "native": self.native,
            }
        )

    @classmethod
    def loads(cls, raw: bytes) -> CachedAnswer:
        data = orjson.loads(raw)
        if data.get("v") != _FORMAT:
            raise ValueError("stored with another format")
        usage = Usage(*data["usage"]) if data["usage"] is not None else None
        body, usage_frame = data["body"], data["usage_frame"]
        return cls(
            deployment=str(data["deployment"]),
            usage=usage,
            body=body.encode() if body is not None else None,
            frames=tuple(f.encode() for f in data["frames"]),
            usage_frame=usage_frame.encode() if usage_frame is not None else None,
            native=data.get("native"),
        )


class CachedStream:
    """A stored stream replayed as an ``UpstreamStream``: the same frames, so the same SSE."""

    def __init__(self, answer: CachedAnswer) -> None:
        self.usage = answer.usage
        self.usage_frame = answer.usage_frame
        self._frames = answer.frames

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for frame in self._frames:
            yield frame

    async def aclose(self) -> None:
        return None


class ResponseCache:
    """Lookups and puts against the store, counted in ``gateway_cache_requests_total{result}``."""

    def __init__(self, store: CacheStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._warned_at = -_WARN_EVERY_S

    def count(self, result: str) -> None:
        self._metrics.child(self._metrics.cache_requests, result).inc()

    async def get(self, key: str) -> CachedAnswer | None:
        return await self.answer(self.lookup(key), key)

    def lookup(self, key: str) -> CacheLookup:
        """Send the read now (no task); ``answer`` awaits it. Cancel it to abandon the read."""
        return self._store.cache_lookup(key)

    async def answer(self, lookup: CacheLookup, key: str) -> CachedAnswer | None:
        try:
            raw = await lookup
        except StoreUnavailableError as exc:
            self._warn("cache lookup failed, served as a miss: %s", exc)
            return None
        if raw is None:
            return None
        try:
            return CachedAnswer.loads(raw)
        except (ValueError, KeyError, TypeError) as exc:  # orjson's decode error is a ValueError
            self._warn("unreadable cache entry %s ignored: %r", key, exc)
            return None

    def put(self, key: str, answer: CachedAnswer, ttl_s: int) -> asyncio.Future[None] | None:
        """Send the entry now, so that the next lookup this replica sends finds it however quick (with
        Redis: ``RedisStore.cache_put``). Returns the write's future, done when the store answered (a
        failure is logged when it comes, no task needed); None when the answer cannot be stored."""
        try:
            value = answer.dumps()
        except UnicodeDecodeError:
            log.debug("answer for %s is not UTF-8 text: not cached", key)
            return None
        written = self._store.cache_put(key, value, ttl_s)
        written.add_done_callback(self._put_done)
        return written

    def _put_done(self, written: asyncio.Future[None]) -> None:
        if written.cancelled():
            return
        exc = written.exception()
        if isinstance(exc, StoreUnavailableError):
            self._warn("cache put failed, answer not cached: %s", exc)
        elif exc is not None:
            log.error("cache put failed", exc_info=exc)

    def _warn(self, message: str, *args: object) -> None:
        # Store trouble would otherwise log once per request; one line per interval says as much.
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning(message, *args)


def usable(answer: CachedAnswer, candidates: tuple[ModelConfig, ...]) -> ModelConfig | None:
    """The deployment behind a stored answer, if this request's plan may still use it.

    The plan is already filtered by the key's allow-list, so a key of the same tenant that may not use
    that deployment does not get its answers, nor does anyone after a reload removed it from the route.
    """
    return next((m for m in candidates if m.name == answer.deployment), None)
