"""OAuth2 access tokens for Vertex AI, from google-auth credentials, cached until they expire.

google-auth refreshes synchronously (it signs a JWT with the service account's RSA key, then POSTs
it to the ``token_uri``), so a refresh runs in a worker thread, never on the event loop. Its HTTP
goes through ``LoopRequest``: google-auth's transport interface, served by the provider's own
``httpx`` transport on the event loop, so the token call takes the same proxies and TLS settings
as the API calls. One refresh at a time (an ``asyncio.Lock``): requests that find the token stale
wait for that refresh instead of each starting one. Between refreshes a call costs a clock read.

Credentials come from ``credentials_file`` (a service account key, or an authorized user's file as
``gcloud auth application-default login`` writes it: the two types loaded here, each by its own
loader, so a file of another type is refused rather than trusted) or, without one, from Application
Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's file, the metadata server),
resolved at the first call, in the worker thread, since discovery may probe the network.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import google.oauth2.credentials
import httpx
from google.oauth2 import service_account

from gateway.errors import UpstreamStatusError, UpstreamUnavailable
from gateway.providers.registry import GOOGLE_CREDENTIAL_TYPES

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_MARGIN_S = 300.0
"""A token is replaced this long before it expires, so none expires while a request is in flight."""
_MAX_TOKEN_ANSWER = 1 << 20
_TOKEN_TIMEOUT_S = 30.0


class _Answer(google.auth.transport.Response):
    def __init__(self, status: int, headers: Mapping[str, str], data: bytes) -> None:
        self._status, self._headers, self._data = status, dict(headers), data

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def data(self) -> bytes:
        return self._data


class LoopRequest(google.auth.transport.Request):
    """google-auth's (synchronous) HTTP interface, called from a worker thread and served on ``loop``
    by an ``httpx`` transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: httpx.AsyncBaseTransport) -> None:
        self._loop = loop
        self._transport = transport

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        wait = float(timeout) if timeout else _TOKEN_TIMEOUT_S
        content = body.encode() if isinstance(body, str) else body
        future = asyncio.run_coroutine_threadsafe(
            self._fetch(url, method, content, headers or {}, wait), self._loop
        )
        try:
            return future.result(wait + 1)
        except Exception as exc:  # google-auth expects its own error type for a failed exchange
            future.cancel()
            raise google.auth.exceptions.TransportError(  # type: ignore[no-untyped-call]
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def _fetch(
        self, url: str, method: str, body: bytes | None, headers: Mapping[str, str], wait: float
    ) -> _Answer:
        timeout = {"connect": wait, "read": wait, "write": wait, "pool": wait}
        request = httpx.Request(method, url, content=body, headers=headers, extensions={"timeout": timeout})
        response = await self._transport.handle_async_request(request)
        try:
            parts: list[bytes] = []
            size = 0
            async for part in response.aiter_raw():
                size += len(part)
                if size > _MAX_TOKEN_ANSWER:
                    raise httpx.DecodingError("the token endpoint's answer is too large")
                parts.append(part)
        finally:
            await response.aclose()
        return _Answer(response.status_code, response.headers, b"".join(parts))


class TokenSource:
    """A bearer token for one provider, refreshed off the event loop shortly before it expires."""

    def __init__(
        self,
        provider: str,
        transport: httpx.AsyncBaseTransport,
        credentials_file: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._provider = provider
        self._transport = transport
        self._file = credentials_file
        self._clock = clock
        self._credentials: google.auth.credentials.Credentials | None = None
        self.project = ""
        """The project the credentials name (service account file, ADC), known after the first token."""
        self._headers: dict[str, str] = {}
        self._fresh_until = 0.0
        self._lock = asyncio.Lock()
        self.refreshes = 0

    async def authorization(self) -> Mapping[str, str]:
        """``{"authorization": "Bearer …"}``, the same object until the token is replaced."""
        if self._clock() < self._fresh_until:
            return self._headers
        async with self._lock:
            if self._clock() >= self._fresh_until:  # another request may have refreshed meanwhile
                await self._refresh()
        return self._headers

    def invalidate(self) -> None:
        """Forget the token: the next call fetches a new one."""
        self._fresh_until = 0.0

    async def _refresh(self) -> None:
        request = LoopRequest(asyncio.get_running_loop(), self._transport)
        try:
            token, expiry = await asyncio.to_thread(self._refresh_sync, request)
        except google.auth.exceptions.RefreshError as exc:
            # The token endpoint refused the credentials: the operator's configuration, like a 401.
            raise UpstreamStatusError(
                401, f"Google token refresh failed: {exc}", code="token_refresh_failed"
            ) from exc
        except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
            raise UpstreamUnavailable(
                f"upstream '{self._provider}' failed: cannot get a Google access token: {exc}",
                code="upstream_auth_unavailable",
            ) from exc
        self.refreshes += 1
        self._headers = {"authorization": f"Bearer {token}"}
        lifetime = expiry - time.time() if expiry is not None else 3600.0
        # A short-lived token (under 10 minutes) is replaced at half its life rather than at once.
        self._fresh_until = self._clock() + max(lifetime - min(REFRESH_MARGIN_S, lifetime / 2), 0.0)

    def _refresh_sync(self, request: LoopRequest) -> tuple[str, float | None]:
        """In the worker thread: load the credentials once, then refresh them."""
        if self._credentials is None:
            found: str | None
            if self._file:
                credentials, found = load_file(self._file)
            else:
                credentials, found = google.auth.default(scopes=SCOPES, request=request)
            self._credentials, self.project = credentials, found or ""
        credentials = self._credentials
        credentials.refresh(request)  # type: ignore[no-untyped-call]
        token = credentials.token
        if not isinstance(token, str) or not token:
            raise ValueError("the credentials returned no access token")
        expiry = credentials.expiry
        if isinstance(expiry, datetime.datetime):  # google-auth keeps naive UTC datetimes
            return token, expiry.replace(tzinfo=datetime.UTC).timestamp()
        return token, None


CREDENTIAL_TYPES = GOOGLE_CREDENTIAL_TYPES


def load_file(path: str) -> tuple[google.auth.credentials.Credentials, str]:
    """A ``credentials_file``'s credentials and the project it names (a service account's own)."""
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        sa = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)  # type: ignore[no-untyped-call]
        return sa, str(info.get("project_id") or "")
    if kind == "authorized_user":
        user = google.oauth2.credentials.Credentials.from_authorized_user_info(info, scopes=SCOPES)  # type: ignore[no-untyped-call]
        return user, str(info.get("quota_project_id") or "")
    raise ValueError(
        f"{path}: credentials of type {kind!r} are not supported (use {' or '.join(CREDENTIAL_TYPES)})"
    )
