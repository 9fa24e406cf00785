"""``POST /v1/messages/count_tokens``: the input tokens of a Messages request, for the deployment it
would be routed to.

Authenticated and routed like ``/v1/messages`` (the key's allow-list holds). When the plan's first
deployment speaks Messages natively (registry ``native: anthropic``) the body goes to its
``{base_url}/v1/messages/count_tokens`` with the model name made the upstream's, and Anthropic's answer
comes back as it is; otherwise the gateway counts the request's OpenAI form with tiktoken, as it does
for a budget reservation (``{"input_tokens": N}``). Neither is charged, reserved or counted against
the key's rpm/tpm: counting is free upstream (Anthropic limits it on its own), and a client calls it
to stay within those limits, not to spend them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import BadRequest, GatewayError, UpstreamStatusError, render_anthropic
from gateway.handlers.anthropic import FORMAT, FORWARDED
from gateway.handlers.endpoint import RequestIncoming
from gateway.ingress.anthropic import to_openai_request
from gateway.ingress.anthropic_view import translatable
from gateway.pipeline.admit import prompt_tokens
from gateway.pipeline.auth import authenticate, for_proxy
from gateway.pipeline.dispatch import upstream_auth_error
from gateway.pipeline.parse import json_object
from gateway.providers.base import Operation
from gateway.responses import json_response
from gateway.state import GatewayState

Counter = Callable[[bytes, Mapping[str, str], float], Awaitable[bytes]]


async def count_tokens(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    runtime = state.runtime
    headers = request.headers
    try:
        raw = await RequestIncoming(request).body(runtime.routes.defaults.max_body_bytes)
        body = json_object(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: required, must be a non-empty string", param="model")
        principal = for_proxy(authenticate(headers, runtime.keys))
        plan = runtime.router.plan(model, headers.get("x-gateway-task") or None, principal)
        deployment = plan.candidates[0]
        provider = runtime.providers[deployment.provider]
        counter = cast(Counter | None, getattr(provider, "count_tokens", None))
        if counter is not None and FORMAT in runtime.resilience.native_formats.get(deployment.provider, ()):
            upstream = {**body, "model": deployment.upstream}
            forwarded = {h: v for h in FORWARDED if (v := headers.get(h))}
            try:
                answer = await counter(orjson.dumps(upstream), forwarded, plan.timeout_s)
            except UpstreamStatusError as exc:
                if exc.status in (401, 403):  # the operator's credentials, not the client's
                    raise upstream_auth_error(deployment, exc) from None
                raise
            return json_response(answer, 200, {"x-gateway-model": deployment.name})
        tokens = prompt_tokens(Operation.CHAT, _view(body), deployment.upstream)
        return json_response(
            orjson.dumps({"input_tokens": tokens}), 200, {"x-gateway-model": deployment.name}
        )
    except GatewayError as err:
        own = None
        if isinstance(err, UpstreamStatusError) and err.native is not None and err.native[0] == FORMAT:
            own = err.native[1]  # Anthropic's own error, as it said it
        return json_response(own or render_anthropic(err), err.status, err.headers)


def _view(body: dict[str, Any]) -> dict[str, Any]:
    """The request's OpenAI form, as admission counts it (``max_tokens`` is not part of this body)."""
    translated, _ = translatable({**body, "max_tokens": 1})
    return to_openai_request(translated)
