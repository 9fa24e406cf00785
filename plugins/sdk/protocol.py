"""The hook protocol's values: what the gateway sends (``HookCall``) and what a plugin answers (``Answer``).

The wire form is DESIGN.md "Sidecar plugin protocol (v1)". ``request`` and ``response`` stay plain JSON
objects in OpenAI chat-completions form: a plugin reads the fields it cares about and must keep the ones it
does not know, so they are not squeezed into a closed type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

PROTOCOL_VERSION = 1

Hook = Literal["pre", "post", "tool"]
Action = Literal["continue", "modify", "reject", "respond"]
JSONObject = dict[str, Any]
Annotations = dict[str, str | int | float | bool | None]
"""Flat: the gateway merges them into its log line and into ``x_gateway.plugins.<name>``."""

HOOKS: tuple[Hook, ...] = ("pre", "post", "tool")


class ProtocolError(ValueError):
    """The gateway's call breaks the protocol (wrong version, missing field): answered with a 400."""


@dataclass(frozen=True, slots=True)
class Delegation:
    """A short-lived token to call the gateway's ``/v1/*`` endpoints as the request's caller."""

    token: str
    expires_at: float
    """Unix seconds."""


@dataclass(frozen=True, slots=True)
class HookCall:
    """One ``POST /hooks/{hook}`` from the gateway."""

    hook: Hook
    request_id: str
    endpoint: str
    tenant: str
    key_id: str
    role: str
    route: str
    config: JSONObject
    """The route's options for this plugin (``{}`` when it has none)."""
    request: JSONObject
    """The request in OpenAI chat-completions form, whatever the endpoint."""
    response: JSONObject | None = None
    """The answer (a ``chat.completion`` object): post hook only."""
    tool_call: JSONObject | None = None
    """Tool hook only."""
    delegation: Delegation | None = None
    deadline: float | None = None
    """Unix seconds: the request's deadline; a plugin's own calls should finish before it."""
    annotations: dict[str, JSONObject] = field(default_factory=dict)
    """What the plugins called before this one annotated, per plugin (guard's flags, say)."""
    served: JSONObject | None = None
    """Post hook only: ``{model, cost_usd}``, the deployment that answered and what the answer cost."""

    @classmethod
    def from_json(cls, body: object, hook: str) -> HookCall:
        """Parse and check a call body; ``hook`` is the one named by the URL."""
        if hook not in HOOKS:
            raise ProtocolError(f"unknown hook {hook!r}")
        if not isinstance(body, dict):
            raise ProtocolError("the body must be a JSON object")
        if body.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported protocol {body.get('protocol')!r}: this plugin speaks 1")
        if body.get("hook", hook) != hook:
            raise ProtocolError(f"the body's hook {body.get('hook')!r} is not the URL's {hook!r}")
        request = body.get("request")
        if not isinstance(request, dict):
            raise ProtocolError("request must be an object")
        config = body.get("config") or {}
        if not isinstance(config, dict):
            raise ProtocolError("config must be an object")
        response = body.get("response")
        if hook == "post" and not isinstance(response, dict):
            raise ProtocolError("a post hook call must carry the response object")
        delegation = None
        raw = body.get("delegation")
        if isinstance(raw, dict) and isinstance(raw.get("token"), str):
            delegation = Delegation(raw["token"], float(raw.get("expires_at") or 0))
        deadline = body.get("deadline")
        raw_notes = body.get("annotations")
        notes = (
            {str(k): v for k, v in raw_notes.items() if isinstance(v, dict)}
            if isinstance(raw_notes, dict)
            else {}
        )
        return cls(
            hook=hook,
            request_id=str(body.get("request_id") or ""),
            endpoint=str(body.get("endpoint") or ""),
            tenant=str(body.get("tenant") or ""),
            key_id=str(body.get("key_id") or ""),
            role=str(body.get("role") or ""),
            route=str(body.get("route") or ""),
            config=config,
            request=request,
            response=response if isinstance(response, dict) else None,
            tool_call=body.get("tool_call") if isinstance(body.get("tool_call"), dict) else None,
            delegation=delegation,
            deadline=float(deadline) if isinstance(deadline, int | float) else None,
            annotations=notes,
            served=body.get("served") if isinstance(body.get("served"), dict) else None,
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """A hook's answer; build it with ``continue_``, ``modify``, ``reject`` or ``respond``."""

    action: Action
    request: JSONObject | None = None
    response: JSONObject | None = None
    tool_call: JSONObject | None = None
    status: int | None = None
    code: str | None = None
    message: str | None = None
    annotations: Annotations = field(default_factory=dict)
    review_id: str | None = None
    """reject only: a held answer's handle, given to the client (``error.review_id``, a header)."""
    retry: bool | None = None
    """reject only: the client's ``x-should-retry`` (False: retrying cannot help)."""

    def to_json(self) -> JSONObject:
        out: JSONObject = {"action": self.action}
        fields = ("request", "response", "tool_call", "status", "code", "message", "review_id", "retry")
        for name in fields:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.annotations:
            out["annotations"] = self.annotations
        return out


def continue_(annotations: Annotations | None = None) -> Answer:
    """Let the request (or answer) through unchanged."""
    return Answer("continue", annotations=annotations or {})


def modify(
    *,
    request: JSONObject | None = None,
    response: JSONObject | None = None,
    tool_call: JSONObject | None = None,
    annotations: Annotations | None = None,
) -> Answer:
    """Replace the request (pre), the response (post) or the tool call (tool) with the one given."""
    if sum(x is not None for x in (request, response, tool_call)) != 1:
        raise ValueError("modify takes exactly one of request, response, tool_call")
    return Answer(
        "modify", request=request, response=response, tool_call=tool_call, annotations=annotations or {}
    )


def reject(
    status: int,
    code: str,
    message: str,
    annotations: Annotations | None = None,
    *,
    review_id: str | None = None,
    retry: bool | None = None,
) -> Answer:
    """Refuse: the client gets ``status`` with ``code`` and ``message`` in the endpoint's error envelope.

    A 4xx from any hook; a 5xx only from a post hook that stands for a bad upstream answer (guard's 502
    ``invalid_output``): the gateway takes a 5xx from a pre or tool hook for a broken plugin.
    ``review_id`` reaches the client as ``error.review_id`` and ``x-gateway-review-id``; ``retry`` as
    ``x-should-retry``.
    """
    if not 400 <= status <= 599:
        raise ValueError(f"reject needs an error status, not {status}")
    return Answer(
        "reject",
        status=status,
        code=code,
        message=message,
        annotations=annotations or {},
        review_id=review_id,
        retry=retry,
    )


def respond(response: JSONObject, annotations: Annotations | None = None) -> Answer:
    """Pre hook only: answer with this ``chat.completion`` object without calling a model."""
    return Answer("respond", response=response, annotations=annotations or {})


class Rejected(Exception):
    """Raise from anywhere inside a hook to answer with ``reject(...)``."""

    def __init__(self, status: int, code: str, message: str, annotations: Annotations | None = None):
        super().__init__(message)
        self.answer = reject(status, code, message, annotations)
