"""Stages 5 and 8: a route's plugins, pre hooks in route order, post hooks in reverse, and the tool hook.

A route is compiled once (``compile_route``) into ``RouteHooks``, or None when it has no plugins: the
pipeline's only per-request cost on such a route is ``plan.hooks is None``. Each call's outcome is
applied here: ``modify`` replaces what the next plugin (and the upstream or client) sees, ``reject``
raises ``PluginRejected``, ``respond`` stops the pre stage with an answer, and a failed call is
``PluginUnavailable`` (``on_error: closed``) or skipped (``open``, counted by the client).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config.model import HookName, PluginConfig, Route
from gateway.delegation import Delegation, InvalidToken, is_token, mint, verify
from gateway.errors import AuthenticationFailed, PluginRejected, PluginUnavailable
from gateway.pipeline.auth import presented_key
from gateway.plugins.hooks import Answer, HookClient, HookFailed, Target

if TYPE_CHECKING:  # the context module imports the router, which compiles routes with this module
    from gateway.context import Exchange


@dataclass(frozen=True, slots=True)
class RouteHooks:
    pre: tuple[Target, ...]
    """Route order."""
    post: tuple[Target, ...]
    """Reverse route order: the plugin nearest the model sees its answer first."""
    tool: tuple[Target, ...]
    post_buffered: tuple[Target, ...] = ()
    """The post hooks a stream is held for (``post_stream: buffer``), in post order."""
    post_audited: tuple[Target, ...] = ()
    """The post hooks shown a stream after it ended (``post_stream: audit``), in post order."""


def compile_route(route: Route, plugins: Mapping[str, PluginConfig]) -> RouteHooks | None:
    """The route's hooks, or None: a route without plugins runs as if this stage did not exist."""
    if not route.plugins:
        return None
    targets = [Target.build(plugins[p.name], p.options, p.post_stream) for p in route.plugins]
    post = tuple(t for t in reversed(targets) if "post" in t.plugin.hooks)
    return RouteHooks(
        pre=tuple(t for t in targets if "pre" in t.plugin.hooks),
        post=post,
        tool=tuple(t for t in targets if "tool" in t.plugin.hooks),
        post_buffered=tuple(t for t in post if t.post_stream == "buffer"),
        post_audited=tuple(t for t in post if t.post_stream == "audit"),
    )


@dataclass(slots=True)
class Caller:
    """Who a request's hook calls are made for: the fields every call carries, built once per request."""

    request_id: str
    endpoint: str
    tenant: str
    key_id: str
    role: str
    route: str
    deadline: float
    """Monotonic: the request's own deadline, which caps every hook's ``timeout_s``."""
    delegation: dict[str, Any]
    annotations: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per plugin: its annotations merged over the hooks it answered, for the log and ``x_gateway``."""

    def payload(self, target: Target, hook: HookName, **parts: Any) -> dict[str, Any]:
        """The call's body; ``annotations`` are what the plugins called before this one said (guard's
        flags for a review hold, say), present only when there are some."""
        if self.annotations:
            parts["annotations"] = self.annotations
        return {
            "protocol": 1,
            "hook": hook,
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "tenant": self.tenant,
            "key_id": self.key_id,
            "role": self.role,
            "route": self.route,
            "config": dict(target.options),
            **parts,
            "delegation": self.delegation,
            "deadline": time.time() + (self.deadline - time.monotonic()),
        }


def delegation_for(
    secret: bytes | None, presented: str | None, tenant: str, key_id: str, request_id: str, deadline: float
) -> dict[str, Any]:
    """``{token, expires_at}`` for the hooks: the caller's own token when it came with one (a token never
    mints another), else a new one that expires with the request (``deadline`` is monotonic)."""
    if secret is None:  # secret.require refuses such a config; kept as a guard, never reached
        raise PluginUnavailable("No delegation secret is configured for plugins.", code="plugin_unavailable")
    now = time.time()
    if presented is not None and is_token(presented):
        try:
            held = verify(secret, presented, now)
        except InvalidToken as exc:
            raise AuthenticationFailed("The delegation token is invalid or expired.") from exc
        return {"token": presented, "expires_at": held.expires_at}
    expires_at = math.ceil(now + max(deadline - time.monotonic(), 0.0))
    token = mint(secret, Delegation(tenant, key_id, request_id, expires_at))
    return {"token": token, "expires_at": expires_at}


@dataclass(slots=True)
class PreOutcome:
    request: dict[str, Any]
    modified: bool = False
    modified_by: Target | None = None
    """The last plugin that changed the request (blamed if the result is not a valid request)."""
    responded_by: str | None = None
    response: dict[str, Any] | None = None


class HookStage:
    def __init__(self, client: HookClient, secret: bytes | None) -> None:
        self._client = client
        self._secret = secret

    def caller(self, ex: Exchange, headers: Mapping[str, str], deadline: float) -> Caller:
        """The request's identity for its hook calls; its annotations become ``ex.plugins`` (the log)."""
        principal = ex.principal
        assert principal is not None and ex.plan is not None
        if principal.delegation_token is not None:
            # verified by authentication, with every secret of a rotation; a token never mints another
            delegation = {"token": principal.delegation_token, "expires_at": principal.delegation_expires_at}
        else:
            delegation = delegation_for(
                self._secret,
                presented_key(headers),
                principal.tenant,
                principal.key_id,
                ex.request_id,
                deadline,
            )
        caller = Caller(
            ex.request_id,
            ex.endpoint,
            principal.tenant,
            principal.key_id,
            principal.role,
            ex.plan.route,
            deadline,
            delegation,
        )
        ex.plugins = caller.annotations
        return caller

    async def _ask(self, caller: Caller, target: Target, hook: HookName, **parts: Any) -> Answer | None:
        """One call; None when it failed and the plugin is ``on_error: open`` (skipped). A ``tool`` hook
        is an approval (asked only for calls whose policy wants a reviewer's): its failure is never a
        skip, which would let the call run unapproved."""
        try:
            answer = await self._client.call(
                target, hook, caller.payload(target, hook, **parts), caller.deadline
            )
        except HookFailed as failed:
            if target.plugin.on_error == "closed" or hook == "tool":
                raise PluginUnavailable(
                    f"The plugin '{target.name}' is unavailable ({failed.reason}: {failed}).",
                    param=target.name,
                ) from failed
            return None
        if answer.annotations:
            caller.annotations.setdefault(target.name, {}).update(answer.annotations)
        if answer.action == "reject":
            raise PluginRejected(
                answer.message,
                status=answer.status,
                code=answer.code,
                review_id=answer.review_id,
                retry=answer.retry,
            )
        return answer

    async def pre(self, caller: Caller, targets: tuple[Target, ...], request: dict[str, Any]) -> PreOutcome:
        out = PreOutcome(request)
        for target in targets:
            answer = await self._ask(caller, target, "pre", request=out.request)
            if answer is None or answer.value is None:
                continue
            if answer.action == "respond":
                out.responded_by, out.response = target.name, answer.value
                return out
            out.request, out.modified, out.modified_by = answer.value, True, target
        return out

    def broken(self, target: Target, hook: HookName, detail: str) -> None:
        """A hook's answer passed the protocol's checks but not the endpoint's (a modified request the
        endpoint refuses): counted as ``invalid``; ``on_error: closed`` makes it a 503, ``open`` returns
        and the caller goes on without the change."""
        self._client.count_error(target, hook, "invalid")
        if target.plugin.on_error == "closed":
            raise PluginUnavailable(
                f"The plugin '{target.name}' is unavailable (invalid: {detail}).", param=target.name
            )

    async def post(
        self,
        caller: Caller,
        targets: tuple[Target, ...],
        request: dict[str, Any],
        response: dict[str, Any],
        served: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """The answer after the post hooks, and whether any of them changed it. ``served`` (the
        deployment that answered and what the answer cost) goes to the hooks as it is."""
        modified = False
        extra = {"served": served} if served is not None else {}
        for target in targets:
            answer = await self._ask(caller, target, "post", request=request, response=response, **extra)
            if answer is not None and answer.value is not None:
                response, modified = answer.value, True
        return response, modified

    async def tool(
        self, caller: Caller, targets: tuple[Target, ...], request: dict[str, Any], tool_call: dict[str, Any]
    ) -> dict[str, Any]:
        """``run_tool_hooks``: the tool call ``{id, name, arguments}`` as the tool hooks leave it, in route
        order; a rejection raises ``PluginRejected`` (the caller decides what a refused call becomes)."""
        for target in targets:
            answer = await self._ask(caller, target, "tool", request=request, tool_call=tool_call)
            if answer is not None and answer.value is not None:
                tool_call = {**answer.value, "id": tool_call.get("id")}  # the call's id is the gateway's
        return tool_call


async def run_tool_hooks(
    stage: HookStage,
    caller: Caller,
    targets: tuple[Target, ...],
    request: dict[str, Any],
    tool_call: dict[str, Any],
) -> dict[str, Any] | PluginRejected:
    """The ``tool`` hook point, for the work that runs tools: the call ``{id, name, arguments}`` as the
    route's tool hooks leave it, or their rejection (returned, not raised: a refused tool call usually
    becomes a tool result the model sees, not an error for the client). A closed plugin that fails
    still raises ``PluginUnavailable``."""
    try:
        return await stage.tool(caller, targets, request, tool_call)
    except PluginRejected as rejected:
        return rejected
