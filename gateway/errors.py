"""The gateway's typed errors and the one place they become HTTP responses.

Exception tree::

    GatewayError                      status, OpenAI type, code
    ├── ClientError                   the caller's request is at fault (4xx)
    │   ├── BadRequest                400 invalid_request_error
    │   ├── AuthenticationFailed      401 invalid_api_key
    │   ├── PermissionDenied          403 model or route not allowed
    │   ├── NotFound                  404 model_not_found / not_found
    │   ├── RequestTimeout            408 the request did not arrive in time (gateway/limits.py)
    │   ├── PayloadTooLarge           413
    │   ├── RateLimited               429 rate_limit_exceeded (retry-after)
    │   └── BudgetExceeded            429 insufficient_quota (x-should-retry: false)
    └── ServerError                   the gateway or an upstream is at fault (5xx, upstream 429)
        ├── UpstreamStatusError       an upstream answered non-2xx (4xx passed through as said)
        ├── UpstreamUnavailable       502 connect/reset/malformed after every attempt
        ├── UpstreamAuthError         502 upstream_auth_error: an upstream refused the gateway's credentials
        ├── NoHealthyDeployment       503
        ├── Overloaded                503 this replica's upstream slots stayed full (retry-after)
        ├── StoreUnavailable          503
        └── DeadlineExceeded          504

Lower-layer exceptions (httpx, redis) are mapped to these at one boundary per layer;
``render_openai`` and ``render_anthropic`` are the only functions that turn one into a body.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

import orjson


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientError(GatewayError):
    status = 400
    type = "invalid_request_error"


class BadRequest(ClientError):
    status = 400
    code = "invalid_request"


class AuthenticationFailed(ClientError):
    status = 401
    code = "invalid_api_key"


class PermissionDenied(ClientError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class ClientClosed(ClientError):
    """The client went away before its request was read whole; nobody sees the answer."""

    status = 499
    code = "client_closed"


class RequestTimeout(ClientError):
    """The request's headers or body did not arrive within the connection limits (gateway/limits.py)."""

    status = 408
    code = "request_timeout"


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class RateLimited(ClientError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(ClientError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("x-should-retry", "false")


class ServerError(GatewayError):
    status = 500
    type = "server_error"


class UpstreamStatusError(ServerError):
    """An upstream answered with a non-2xx status; ``status`` is the upstream's."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(
            message,
            status=status,
            type=type or _default_type(status),
            code=code,
            param=param,
            headers=retry_headers(retry_after),
        )
        self.retry_after = retry_after
        self.native: tuple[str, bytes] | None = None
        """(wire format, bytes): the upstream's own error body or stream event, for a client that speaks
        that format (``/v1/messages`` gets an Anthropic upstream's error as Anthropic wrote it)."""

    @property
    def retryable(self) -> bool:
        return self.status in (408, 409, 429) or self.status >= 500


class UpstreamUnavailable(ServerError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamAuthError(ServerError):
    """An upstream answered 401/403: the operator's provider credentials are wrong, not the client's key.

    Never carries the upstream's text (it may quote the provider key); dispatch logs that server-side.
    ``x-should-retry: false``: a client retrying in seconds meets the same misconfiguration.
    """

    status = 502
    type = "server_error"
    code = "upstream_auth_error"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("x-should-retry", "false")


class NoHealthyDeployment(ServerError):
    status = 503
    code = "no_healthy_deployment"


class Overloaded(ServerError):
    """Every upstream slot of this replica stayed taken for the whole queue timeout."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        # A short back-off: slots free up as soon as the requests holding them end.
        for name, value in retry_headers(1).items():
            self.headers.setdefault(name, value)


class StoreUnavailable(ServerError):
    status = 503
    code = "store_unavailable"


class DeadlineExceeded(ServerError):
    status = 504
    type = "timeout"
    code = "deadline_exceeded"


MAX_RETRY_AFTER_S = 3600
"""The longest wait the gateway passes on (``retry-after``): an upstream's longer or absurd hint
(``1e20``) is clamped to it; a hint that is no number or date (``nan``, ``inf``, garbage) is dropped."""


def retry_after_seconds(hint: str | float | None, now: float | None = None) -> float | None:
    """A ``retry-after`` hint (seconds or an HTTP date) as finite seconds in 0..MAX_RETRY_AFTER_S;
    None when there is none or it is malformed (``nan``, ``inf``, ``-inf`` are malformed)."""
    if hint is None or hint == "":
        return None
    try:
        seconds = float(hint)
    except ValueError:
        seconds = _until_http_date(str(hint), time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _until_http_date(hint: str, now: float) -> float:
    try:
        return email.utils.parsedate_to_datetime(hint).timestamp() - now
    except (TypeError, ValueError, OverflowError):
        return math.nan


def retry_headers(retry_after: str | float | None) -> dict[str, str]:
    """``retry-after`` (whole seconds) and ``retry-after-ms``, which the OpenAI SDKs honour first;
    nothing for a malformed hint, and never more than ``MAX_RETRY_AFTER_S``."""
    seconds = retry_after_seconds(retry_after)
    if seconds is None:
        return {}
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(0, round(seconds * 1000))),
    }


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status < 500:
        return "invalid_request_error"
    return "server_error"


def render_openai(err: GatewayError) -> bytes:
    return orjson.dumps(err.body())


# Anthropic's error types by status, as its SDK maps them.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def render_anthropic(err: GatewayError) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": anthropic_error_type(err.status), "message": err.message}}
    )


def stream_error_payload(err: GatewayError) -> bytes:
    """The body of the SSE frame that ends a stream which failed after its first byte."""
    return orjson.dumps(
        {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    )


class PluginUnavailable(ServerError):
    """A plugin with ``on_error: closed`` timed out, refused, failed or broke the protocol."""

    status = 503
    code = "plugin_unavailable"


class PluginRejected(ClientError):
    """A hook answered ``reject``: its status (4xx; or 5xx from a post hook), code and message go to the
    client as they are. A ``review_id`` (a held answer's handle) goes into ``error.review_id`` and the
    ``x-gateway-review-id`` header; ``retry`` into ``x-should-retry``."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None,
        review_id: str | None = None,
        retry: bool | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, type=_default_type(status))
        self.review_id = review_id
        if review_id is not None:
            self.headers["x-gateway-review-id"] = review_id
        if retry is not None:
            self.headers["x-should-retry"] = "true" if retry else "false"

    def body(self) -> dict[str, Any]:
        out = super().body()
        if self.review_id is not None:
            out["error"]["review_id"] = self.review_id
        return out
