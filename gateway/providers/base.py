"""The one interface every provider adapter implements.

The gateway speaks OpenAI's wire format internally: an ``UpstreamRequest`` carries an OpenAI-format
body (chat, completions or embeddings) whose ``model`` is already the provider's model name, and an
adapter returns OpenAI-format bytes. Streams yield complete OpenAI SSE frames (``data: {...}\\n\\n``)
and never the terminal ``[DONE]`` nor the usage-only chunk: the adapter keeps the latter in
``usage_frame`` so the core decides whether the client gets it.

One exception: a request carrying ``native`` (``NativeRequest``: the client's body in a wire format this
provider's type speaks, per the registry) is sent as that body, and answered in that format too: the
response's ``native`` holds the upstream's bytes (``body`` stays the OpenAI form), a stream yields the
upstream's own events (``usage`` and ``usage_frame`` as for any stream).

Adapters raise only ``gateway.errors`` types: ``UpstreamStatusError`` for a non-2xx answer (the message
taken from the upstream's error body), ``UpstreamUnavailable`` for connect errors, resets and malformed
bodies, ``DeadlineExceeded`` for timeouts, ``BadRequest`` for what the provider cannot express.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# A chat body's private key: the top-level fields of a ``/v1/responses`` request that chat has no slot
# for (``reasoning``, ``include``, unknown ones …), as the client sent them. A provider that speaks
# Responses natively sends them on unchanged; every other one drops the key before the wire.
RESPONSES_EXTRA = "_responses_extra"


class Operation(enum.Enum):
    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


@dataclass(slots=True)
class Usage:
    """Token counts in OpenAI's sense: ``prompt_tokens`` includes cached and cache-write tokens.

    Built from an upstream's report, the counts are as reported, and may be negative or absurd; a
    count that was no integer at all (``"abc"``, ``true``, ``1.5``) reads as 0 and sets ``malformed``.
    ``gateway/pipeline/usage_check.py`` vets them before anything is priced.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False
    """Counted by the gateway with tiktoken because the upstream reported no usage."""
    malformed: bool = False
    """The upstream reported a count that is not an integer."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage | None:
        if not isinstance(usage, Mapping):
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if type(prompt) is int and type(completion) is int and (cached is None or type(cached) is int):
            return cls(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached or 0)
        p, c, r = token_count(prompt), token_count(completion), token_count(cached)
        return cls(
            prompt_tokens=p or 0,
            completion_tokens=c or 0,
            cached_tokens=r or 0,
            malformed=p is None or c is None or r is None,
        )

    def to_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def token_count(value: Any) -> int | None:
    """An upstream's token count as an int: absent (None) is 0; an integral float (``12.0``) is read as
    its int; anything else (a string, a bool, ``1.5``, ``nan``) is None. Range is checked elsewhere."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


@dataclass(slots=True)
class NativeRequest:
    """A request in a client wire format some upstreams speak as they are (``/v1/messages`` →
    ``format: anthropic``), carried beside its OpenAI form.

    Dispatch hands it to an attempt whose provider type lists ``format`` as ``native`` in the registry
    (``UpstreamRequest.native``); that adapter sends ``body`` (``raw`` when nothing changed) and answers
    in the same format. Every other attempt gets the OpenAI form, unless ``untranslatable`` says the
    OpenAI form lost something the request needs: then dispatch skips that candidate.
    """

    format: str
    body: dict[str, Any]
    """The client's body, parsed (pre hooks' changes laid over it)."""
    raw: bytes | None = None
    """The client's bytes, while ``body`` is unchanged: sent as they are when the model name is too."""
    untranslatable: Exception | None = None
    """Why the OpenAI form cannot stand for this request (a ``BadRequest`` naming the field)."""
    enabled: bool = True
    """False where the route needs the OpenAI form of the answer (a stream with post hooks)."""
    served: bool = False
    """Set by dispatch per attempt: the answer (body or stream frames) is in ``format``."""


@dataclass(slots=True)
class UpstreamRequest:
    operation: Operation
    body: dict[str, Any]
    """OpenAI-format request body; ``model`` is the provider's model name."""
    timeout_s: float
    """Time left for this attempt, connect to last byte of headers (streams) or body."""
    headers: dict[str, str] = field(default_factory=dict)
    """Client headers an adapter may forward (e.g. ``anthropic-version``); never auth or x-gateway-*."""
    content: bytes | None = None
    """The body as the adapter sends it, when it encoded it ahead of the call (``prepare``)."""
    native: NativeRequest | None = None
    """Set only when this provider speaks the client's wire format: send it, answer in it."""

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


@dataclass(slots=True)
class UpstreamResponse:
    body: bytes
    """OpenAI-format JSON body, ready to send to the client."""
    usage: Usage | None
    status: int = 200
    native: bytes | None = None
    """The upstream's own body, when the request went upstream natively (``UpstreamRequest.native``):
    what the client gets; ``body`` is its OpenAI form, for hooks, logs and counting."""


class UpstreamStream(Protocol):
    """An open upstream stream: iterate for OpenAI SSE frames; always ``aclose`` it."""

    usage: Usage | None
    usage_frame: bytes | None
    """The usage-only chunk (``choices: []``) as an SSE frame, when the upstream sent usage."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    """A configured upstream: one instance per provider entry in routes.yaml."""

    name: str

    def prepare(self, request: UpstreamRequest) -> None:
        """Do ahead what ``send``/``open_stream`` would do before their first write, if anything (set
        ``request.content``); dispatch calls it while admission is in flight. It must not change what
        is sent, only when it is worked out; an error here is met again by the call."""
        ...

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send a non-streaming request; return the OpenAI-format answer."""
        ...

    async def open_stream(self, request: UpstreamRequest) -> UpstreamStream:
        """Send a streaming request and return once the upstream accepted it (2xx headers)."""
        ...
