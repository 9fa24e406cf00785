"""The HTTP plumbing adapters share: send JSON, open a stream, map httpx's errors once.

Adapters talk to an ``httpx.AsyncBaseTransport`` directly rather than through ``httpx.AsyncClient``:
the client's per-request machinery (URL merging, cookies, auth and redirect hooks) costs more CPU
than the transport underneath and the gateway uses none of it. Tests substitute
``httpx.MockTransport`` at the same seam.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import httpx
import orjson

from gateway import __version__
from gateway.config.model import UpstreamLimits
from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    UpstreamStatusError,
    UpstreamUnavailable,
    retry_after_seconds,
)
from gateway.memo import Memo
from gateway.providers.decode import (
    DecodedTooLarge,
    UnsupportedEncoding,
    decode_stream,
    decode_whole,
    encoding_of,
)
from gateway.sse import LimitExceeded
from gateway.transport import FastTransport, RawResponse, ResponseTooLarge

NO_LIMITS = UpstreamLimits()

ErrorMapper = Callable[[int, bytes, Mapping[str, str]], UpstreamStatusError]


class OpenResponse(Protocol):
    """An upstream answer whose body is still arriving: an ``httpx.Response`` or a ``RawResponse``."""

    status_code: int

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, decoded where the upstream compressed it; httpx's exceptions on failure."""
        ...

    async def aclose(self) -> None:
        """Release the connection (closed, unless the whole body was read); safe to call twice."""
        ...


def map_transport_error(exc: httpx.HTTPError, provider: str) -> GatewayError:
    """The one boundary where httpx exceptions become gateway errors."""
    if isinstance(exc, httpx.TimeoutException):
        return DeadlineExceeded(f"upstream '{provider}' timed out")
    if isinstance(exc, ResponseTooLarge):
        return too_large(provider, exc.limit, "answer")
    tls = _tls_failure(exc)
    if tls is not None:
        message = f"upstream '{provider}' failed: TLS error: {tls}"
        return UpstreamUnavailable(message, code="upstream_tls_error")
    return UpstreamUnavailable(f"upstream '{provider}' failed: {type(exc).__name__}")


def _tls_failure(exc: BaseException) -> str | None:
    """The TLS reason behind a transport error (an untrusted certificate, a client certificate the
    server wanted), so that the operator sees it in the 502 and the log rather than "ConnectError"."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; bounded all the same
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            verify = getattr(seen, "verify_message", None)
            return f"{seen.reason or 'handshake failed'}" + (f" ({verify})" if verify else "")
        seen = seen.__cause__ or seen.__context__
    return None


def map_limit_error(exc: Exception, provider: str) -> GatewayError:
    """An answer past one of ``UpstreamLimits`` (or undecodable) as the 502 the client gets."""
    if isinstance(exc, DecodedTooLarge):
        return too_large(provider, exc.limit, "decoded answer")
    if isinstance(exc, LimitExceeded):
        return too_large(provider, exc.limit, exc.what)
    return UpstreamUnavailable(f"upstream '{provider}' sent an undecodable body: {exc}")


def too_large(provider: str, limit: int, what: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"upstream '{provider}' sent a {what} larger than the gateway's limit ({limit} bytes)",
        code="upstream_too_large",
    )


LIMIT_ERRORS = (DecodedTooLarge, UnsupportedEncoding, LimitExceeded)
"""What reading an answer within ``UpstreamLimits`` raises, besides httpx's errors."""


def openai_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamStatusError:
    """An OpenAI-format error body becomes an error that renders the same way, message intact."""
    message, etype, code, param = f"upstream returned HTTP {status}", None, None, None
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        etype = err.get("type") if isinstance(err.get("type"), str) else None
        code = err.get("code") if isinstance(err.get("code"), str) else None
        param = err.get("param") if isinstance(err.get("param"), str) else None
    elif isinstance(err, str):
        message = err
    elif body and data is None:
        message = f"{message}: {body[:200].decode('utf-8', 'replace')}"
    return UpstreamStatusError(
        status, message, type=etype, code=code, param=param, retry_after=retry_after_of(headers)
    )


def retry_after_of(headers: Mapping[str, str]) -> str | None:
    """The upstream's wait as seconds text (``retry-after-ms`` first), bounded; None if malformed."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            seconds = retry_after_seconds(float(ms) / 1000.0)
        except ValueError:
            seconds = None
        if seconds is not None:
            return f"{seconds:g}"
    seconds = retry_after_seconds(headers.get("retry-after"))
    return f"{seconds:g}" if seconds is not None else None


USER_AGENT = "llm-gateway/" + __version__
USER_AGENT_BYTES = USER_AGENT.encode()


def has_user_agent(headers: Mapping[str, str]) -> bool:
    """Case-insensitively; the providers' own header dicts carry it lower-case (one lookup)."""
    return "user-agent" in headers or any(name.lower() == "user-agent" for name in headers)


@functools.lru_cache(maxsize=1024)
def _url(url: str) -> httpx.URL:
    """Parsed once per upstream URL: httpx's URL parsing costs more than the rest of the request."""
    return httpx.URL(url)


def _encoded(body: Mapping[str, Any] | bytes) -> bytes:
    """A JSON body as sent: encoded here, or already (a provider may encode it ahead of the call)."""
    return body if isinstance(body, bytes) else orjson.dumps(body)


def _request(
    url: str, body: Mapping[str, Any] | bytes, headers: Mapping[str, str], timeout_s: float
) -> httpx.Request:
    timeout = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    if not has_user_agent(headers):
        headers = {**headers, "user-agent": USER_AGENT}
    return httpx.Request(
        "POST", _url(url), content=_encoded(body), headers=headers, extensions={"timeout": timeout}
    )


async def post_json(
    transport: httpx.AsyncBaseTransport,
    provider: str,
    url: str,
    *,
    body: Mapping[str, Any] | bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    on_error: ErrorMapper = openai_error,
    limits: UpstreamLimits = NO_LIMITS,
) -> tuple[bytes, Any]:
    """POST a JSON body and return (raw bytes, parsed JSON) of a 2xx answer.

    The whole call is bounded by dispatch's attempt deadline (one timer per attempt, not one per layer);
    ``timeout_s`` also goes to the transport for its connect/read/write/pool waits. A 2xx body past
    ``limits.max_body_bytes`` is a 502; an error body is read up to ``limits.max_error_bytes`` only.
    """
    if isinstance(transport, FastTransport):
        status, raw_headers, content = await _fetch(
            transport, provider, url, body, headers, timeout_s, limits
        )
    else:
        try:
            resp = await transport.handle_async_request(_request(url, body, headers, timeout_s))
            try:
                status, raw_headers = resp.status_code, _raw_headers(resp)  # before the body is read
                ok = status // 100 == 2
                limit = limits.max_body_bytes if ok else limits.max_error_bytes
                read = await read_capped(_raw(resp), limit, cut=not ok)
                if read is None:
                    raise too_large(provider, limit, "answer")
                content = read
            finally:
                await resp.aclose()
        except httpx.HTTPError as exc:
            raise map_transport_error(exc, provider) from exc
        content = _decoded(provider, status, raw_headers, content, limits)
    if status // 100 != 2:
        raise on_error(status, content, httpx.Headers(raw_headers))
    try:
        return content, orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise UpstreamUnavailable(f"upstream '{provider}' sent a malformed body") from exc


async def _fetch(
    transport: FastTransport,
    provider: str,
    url: str,
    body: Mapping[str, Any] | bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    limits: UpstreamLimits,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``FastTransport``'s short path: no httpx Request/Response objects, same wire bytes."""
    try:
        status, raw_headers, content = await transport.fetch(
            _url(url),
            _wire(headers),
            _encoded(body),
            timeout_s,
            limits.max_body_bytes,
            limits.max_error_bytes,
        )
    except httpx.HTTPError as exc:
        raise map_transport_error(exc, provider) from exc
    return status, raw_headers, _decoded(provider, status, raw_headers, content, limits)


def _decoded(
    provider: str, status: int, raw_headers: list[tuple[bytes, bytes]], content: bytes, limits: UpstreamLimits
) -> bytes:
    """A whole body, decoded if the upstream compressed it although the gateway asked for nothing of
    the kind: within ``max_body_bytes`` (past it a 502) or, for an error, cut at ``max_error_bytes``."""
    encoding = encoding_of(raw_headers)
    if encoding is None:
        return content
    ok = status // 100 == 2
    try:
        return decode_whole(
            content, encoding, limits.max_body_bytes if ok else limits.max_error_bytes, cut=not ok
        )
    except LIMIT_ERRORS as exc:
        if not ok:  # an error is still an error; its undecodable body is just not worth showing
            return b""
        raise map_limit_error(exc, provider) from exc


async def _raw(resp: httpx.Response) -> AsyncIterator[bytes]:
    """An httpx answer's body as sent (decoded here, within limits), or whole if already read."""
    if resp.is_stream_consumed:  # built with ``content=`` (a test's MockTransport): already in memory
        yield resp.content
        return
    async for part in resp.aiter_raw():
        yield part


def _raw_headers(resp: httpx.Response) -> list[tuple[bytes, bytes]]:
    """The headers as sent; an answer httpx already read (and decoded) counts as not encoded."""
    if resp.is_stream_consumed:
        return [(k, v) for k, v in resp.headers.raw if k.lower() != b"content-encoding"]
    return resp.headers.raw


async def read_capped(chunks: AsyncIterator[bytes], limit: int, *, cut: bool) -> bytes | None:
    """A body read up to ``limit`` bytes and no further: past it None, or with ``cut`` the first
    ``limit`` bytes. The caller closes the answer, which drops the connection if bytes were left."""
    parts: list[bytes] = []
    total = 0
    async for part in chunks:
        total += len(part)
        if total > limit:
            if not cut:
                return None
            parts.append(part[: len(part) - (total - limit)])
            break
        parts.append(part)
    return b"".join(parts)


class _DecodedResponse:
    """An open answer whose body is decoded as it arrives, within ``limit`` decoded bytes."""

    def __init__(
        self, inner: OpenResponse, raw: AsyncIterator[bytes], encoding: bytes, limit: int, provider: str
    ):
        self.status_code = inner.status_code
        self._inner = inner
        self._raw = raw
        self._encoding = encoding
        self._limit = limit
        self._provider = provider

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for piece in decode_stream(self._raw, self._encoding, self._limit):
                yield piece
        except LIMIT_ERRORS as exc:
            raise map_limit_error(exc, self._provider) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


async def open_stream(
    transport: httpx.AsyncBaseTransport,
    provider: str,
    url: str,
    *,
    body: Mapping[str, Any] | bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    on_error: ErrorMapper = openai_error,
    limits: UpstreamLimits = NO_LIMITS,
) -> OpenResponse:
    """Send a streaming request; return the open 2xx response (the caller must close it). Bounded by
    dispatch's attempt deadline, like ``post_json``. A ``FastTransport`` takes ``open``, the short path.
    An error body is read up to ``limits.max_error_bytes`` only; a compressed stream is decoded within
    ``limits.max_stream_bytes`` (the SSE parser holds the stream to its limits past that)."""
    resp: httpx.Response | RawResponse
    try:
        if isinstance(transport, FastTransport):
            resp = await transport.open(_url(url), _wire(headers), _encoded(body), timeout_s)
            raw_headers, raw = resp.headers, resp.aiter_bytes()
        else:
            resp = await transport.handle_async_request(_request(url, body, headers, timeout_s))
            raw_headers, raw = _raw_headers(resp), _raw(resp)
    except httpx.HTTPError as exc:
        raise map_transport_error(exc, provider) from exc
    if resp.status_code // 100 != 2:
        try:
            content = await read_capped(raw, limits.max_error_bytes, cut=True) or b""
        except httpx.HTTPError as exc:
            raise map_transport_error(exc, provider) from exc
        finally:
            await resp.aclose()
        content = _decoded(provider, resp.status_code, raw_headers, content, limits)
        raise on_error(resp.status_code, content, httpx.Headers(raw_headers))
    encoding = encoding_of(raw_headers)
    if encoding is not None:
        return _DecodedResponse(resp, raw, encoding, limits.max_stream_bytes, provider)
    return resp


_wires: Memo[int, list[tuple[bytes, bytes]]] = Memo(64)


def _wire(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """The providers' headers as ``FastTransport`` sends them, with the gateway's user-agent if none;
    encoded once for a provider's own (long-lived) headers object."""
    kept = _wires.get(id(headers), headers)
    if kept is not None:
        return kept
    wire = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    if not has_user_agent(headers):
        wire.append((b"user-agent", USER_AGENT_BYTES))
    if type(headers) is OneOff:
        return wire  # never met again: kept, it would only push the long-lived ones out
    return _wires.put(id(headers), headers, wire)


class OneOff(dict[str, str]):
    """Headers built for one request (a signed request's): encoded for the wire without being memoized."""
