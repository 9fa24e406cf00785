"""Delegated calls back to the gateway: ``/v1/*`` as the request's caller, inside its deadline.

The gateway hands each hook call a delegation token; sent as the bearer key, it makes the call count as
the original caller's (limits, budget, price, log with ``parent_request_id``). It works only on ``/v1/*``
and only until it expires.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from plugins.sdk.protocol import Delegation, JSONObject

MIN_TIMEOUT_S = 0.05


class GatewayCallError(Exception):
    """A delegated call failed: ``status`` is the gateway's (0 when it could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"gateway call failed ({status or 'unreachable'}): {message}")
        self.status = status


class GatewayClient:
    """A small async client for ``GATEWAY_URL``; one per sidecar process, closed with ``aclose``."""

    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(
        self, path: str, body: JSONObject, *, delegation: Delegation, deadline: float | None = None
    ) -> JSONObject:
        """POST ``body`` to ``path`` (e.g. ``/v1/chat/completions``); the JSON answer, or GatewayCallError.

        The timeout is what is left until ``deadline`` (unix seconds), when one is given.
        """
        timeout = None if deadline is None else max(MIN_TIMEOUT_S, deadline - time.time())
        try:
            response = await self._http.post(
                path, json=body, headers={"authorization": f"Bearer {delegation.token}"}, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise GatewayCallError(0, f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise GatewayCallError(response.status_code, _error_message(response))
        try:
            data: Any = response.json()
        except ValueError as exc:
            raise GatewayCallError(response.status_code, "the answer is not JSON") from exc
        if not isinstance(data, dict):
            raise GatewayCallError(response.status_code, "the answer is not a JSON object")
        return data

    async def chat_completions(
        self, body: JSONObject, *, delegation: Delegation, deadline: float | None = None
    ) -> JSONObject:
        return await self.post("/v1/chat/completions", body, delegation=delegation, deadline=deadline)


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
