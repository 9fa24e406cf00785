"""The HTTP plumbing adapters share: send JSON, open a stream, map httpx's errors once.

Adapters talk to an ``httpx.AsyncBaseTransport`` directly rather than through ``httpx.AsyncClient``:
the client's per-request machinery (URL merging, cookies, auth and redirect hooks) costs more CPU
than the transport underneath and the gateway uses none of it. Tests substitute
``httpx.MockTransport`` at the same seam.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import httpx
import orjson

from gateway import __version__
from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    UpstreamStatusError,
    UpstreamUnavailable,
    retry_after_seconds,
)
from gateway.memo import Memo
from gateway.transport import FastTransport, RawResponse

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
    return UpstreamUnavailable(f"upstream '{provider}' failed: {type(exc).__name__}")


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
) -> tuple[bytes, Any]:
    """POST a JSON body and return (raw bytes, parsed JSON) of a 2xx answer.

    The whole call is bounded by dispatch's attempt deadline (one timer per attempt, not one per layer);
    ``timeout_s`` also goes to the transport for its connect/read/write/pool waits.
    """
    if isinstance(transport, FastTransport):
        status, raw_headers, content = await _fetch(transport, provider, url, body, headers, timeout_s)
    else:
        try:
            resp = await transport.handle_async_request(_request(url, body, headers, timeout_s))
            try:
                await resp.aread()
            finally:
                await resp.aclose()
        except httpx.HTTPError as exc:
            raise map_transport_error(exc, provider) from exc
        status, raw_headers, content = resp.status_code, resp.headers.raw, resp.content
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
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``FastTransport``'s short path: no httpx Request/Response objects, same wire bytes."""
    try:
        status, raw_headers, content = await transport.fetch(
            _url(url), _wire(headers), _encoded(body), timeout_s
        )
    except httpx.HTTPError as exc:
        raise map_transport_error(exc, provider) from exc
    if any(name.lower() == b"content-encoding" for name, _ in raw_headers):
        # compressed although the gateway asked for nothing of the kind: let httpx decode it
        content = httpx.Response(status, headers=raw_headers, content=content).read()
    return status, raw_headers, content


async def open_stream(
    transport: httpx.AsyncBaseTransport,
    provider: str,
    url: str,
    *,
    body: Mapping[str, Any] | bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    on_error: ErrorMapper = openai_error,
) -> OpenResponse:
    """Send a streaming request; return the open 2xx response (the caller must close it). Bounded by
    dispatch's attempt deadline, like ``post_json``. A ``FastTransport`` takes ``open``, the short path."""
    resp: httpx.Response | RawResponse
    try:
        if isinstance(transport, FastTransport):
            resp = await transport.open(_url(url), _wire(headers), _encoded(body), timeout_s)
            if any(name.lower() == b"content-encoding" for name, _ in resp.headers):
                # compressed although the gateway asked for nothing of the kind: let httpx decode it
                resp = httpx.Response(resp.status_code, headers=resp.headers, stream=resp.stream)
        else:
            resp = await transport.handle_async_request(_request(url, body, headers, timeout_s))
    except httpx.HTTPError as exc:
        raise map_transport_error(exc, provider) from exc
    if resp.status_code // 100 != 2:
        try:
            content = await resp.aread()
        except httpx.HTTPError as exc:
            raise map_transport_error(exc, provider) from exc
        finally:
            await resp.aclose()
        raise on_error(resp.status_code, content, httpx.Headers(resp.headers))
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
    return _wires.put(id(headers), headers, wire)
