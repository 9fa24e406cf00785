"""OpenAI's endpoints: chat, legacy completions, embeddings, models."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, NotFound, UpstreamUnavailable, render_openai, stream_error_payload
from gateway.handlers.endpoint import ProxyEndpoint
from gateway.logs import clip
from gateway.pipeline.auth import authenticate, for_proxy
from gateway.providers.base import NativeRequest, Operation, UpstreamResponse, UpstreamStream
from gateway.responses import json_response
from gateway.sse import DONE_FRAME, data_frame
from gateway.state import GatewayState


class OpenAIIngress:
    """OpenAI in, OpenAI out: the body passes through; streams get the usage chunk only if asked."""

    stateful = False
    native: NativeRequest | None = None

    def request(self, body: dict[str, Any], raw: bytes = b"") -> dict[str, Any]:
        return body

    def modified(self, request: dict[str, Any]) -> dict[str, Any]:
        return request

    def forward_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {}

    def response(self, upstream: UpstreamResponse) -> bytes:
        return upstream.body

    async def stream(self, upstream: UpstreamStream, include_usage: bool) -> AsyncIterator[bytes]:
        async for frame in upstream:
            yield frame
        if include_usage and upstream.usage_frame is not None:
            yield upstream.usage_frame
        yield DONE_FRAME

    def error(self, err: GatewayError) -> bytes:
        return render_openai(err)

    def stream_error(self, err: GatewayError) -> bytes:
        return data_frame(stream_error_payload(err))


class EmbeddingsIngress(OpenAIIngress):
    """Asks upstreams for floats (every server supports them) and encodes base64 itself when asked.

    Every OpenAI SDK sends ``encoding_format: "base64"`` by default, which some OpenAI-compatible
    servers reject; the client still gets little-endian float32 base64 as it asked.
    """

    def __init__(self) -> None:
        self.base64 = False

    def request(self, body: dict[str, Any], raw: bytes = b"") -> dict[str, Any]:
        fmt = body.get("encoding_format")
        if fmt is None or fmt == "float":
            return body
        if fmt != "base64":
            return body  # let the upstream judge an unknown format and answer 400
        self.base64 = True
        return {k: v for k, v in body.items() if k != "encoding_format"}

    def response(self, upstream: UpstreamResponse) -> bytes:
        if not self.base64:
            return upstream.body
        data = orjson.loads(upstream.body)
        items = data.get("data") if isinstance(data, dict) else None
        if not items or not isinstance(items, list):
            raise UpstreamUnavailable("upstream returned no embeddings")
        for item in items:
            vector = item.get("embedding") if isinstance(item, dict) else None
            if isinstance(vector, list):
                item["embedding"] = _packed(vector)
        return orjson.dumps(data)


def _packed(vector: list[Any]) -> str:
    """A float vector as base64 of little-endian float32; 502 for an upstream's non-numeric one."""
    try:
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    except (struct.error, TypeError, OverflowError) as exc:  # strings, nulls, bools... or > float32
        raise UpstreamUnavailable(
            "upstream returned an embedding that is not a vector of float32 numbers"
        ) from exc


chat_completions = ProxyEndpoint("/v1/chat/completions", Operation.CHAT, OpenAIIngress)
completions = ProxyEndpoint("/v1/completions", Operation.COMPLETIONS, OpenAIIngress)
embeddings = ProxyEndpoint("/v1/embeddings", Operation.EMBEDDINGS, EmbeddingsIngress)


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "gateway"}


async def list_models(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    runtime = state.runtime
    try:
        principal = for_proxy(authenticate(request.headers, runtime.keys))
    except GatewayError as err:
        return json_response(render_openai(err), err.status, err.headers)
    names = runtime.router.reachable(principal)
    body = {"object": "list", "data": [_model_object(n) for n in sorted(names)]}
    return json_response(orjson.dumps(body), 200, {})


async def get_model(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    runtime = state.runtime
    try:
        principal = for_proxy(authenticate(request.headers, runtime.keys))
        name = unquote(request.path_params["model"])
        if name not in runtime.router.reachable(principal):
            raise NotFound(f"The model '{clip(name)}' does not exist.", param="model", code="model_not_found")
    except GatewayError as err:
        return json_response(render_openai(err), err.status, err.headers)
    return json_response(orjson.dumps(_model_object(name)), 200, {})
