"""One hook call to a sidecar, and its answer checked against the protocol (DESIGN.md, plugin protocol v1).

``HookClient.call`` POSTs ``{url}/hooks/{hook}`` and returns an ``Answer``, or raises ``HookFailed`` with
the reason the metrics count (``timeout``, ``connect``, ``status``, ``invalid``): the stage decides what
a failure means (``on_error``). Anything the protocol does not allow is ``invalid``: an answer is
either exactly right or the plugin broke the contract, so a half-understood answer never changes a
request.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import httpx
import orjson

from gateway.config.model import HookName, PluginConfig
from gateway.deadline import passed

if TYPE_CHECKING:  # the metrics module imports the pipeline, which compiles routes with this module
    from gateway.metrics import Metrics
    from gateway.transport import FastTransport

Action = Literal["continue", "modify", "reject", "respond"]
Reason = Literal["timeout", "connect", "status", "invalid"]
PROTOCOL = 1
MAX_ANSWER_BYTES = 32 * 1024 * 1024

# What each hook may answer, and the field a modify replaces.
_ACTIONS: dict[str, frozenset[str]] = {
    "pre": frozenset({"continue", "modify", "reject", "respond"}),
    "post": frozenset({"continue", "modify", "reject"}),
    "tool": frozenset({"continue", "modify", "reject"}),
}
MODIFIES: dict[str, str] = {"pre": "request", "post": "response", "tool": "tool_call"}
_ID_OK = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""A reject's ``review_id``: it becomes a response header, so nothing that could break one."""


class HookFailed(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    action: Action
    value: dict[str, Any] | None = None
    """The replacement (modify: request, response or tool_call) or the answer (respond: response)."""
    status: int = 0
    code: str | None = None
    message: str = ""
    annotations: dict[str, Any] = field(default_factory=dict)
    review_id: str | None = None
    """A reject's handle on a held answer (the review plugin's ``hold: async``): the client gets it."""
    retry: bool | None = None
    """A reject's ``x-should-retry``: False when retrying cannot help (a retry would only queue again)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One plugin as a route calls it: its config, its options, and what each call needs, worked out
    once when the route is compiled."""

    plugin: PluginConfig
    options: Mapping[str, object]
    post_stream: Literal["buffer", "audit"]
    urls: Mapping[str, httpx.URL]
    headers: list[tuple[bytes, bytes]]

    @classmethod
    def build(cls, plugin: PluginConfig, options: Mapping[str, object], post_stream: str) -> Target:
        base = plugin.url.rstrip("/")
        headers = [(b"Content-Type", b"application/json"), (b"User-Agent", b"llm-gateway-hooks/1")]
        if plugin.token:
            headers.append((b"Authorization", f"Bearer {plugin.token}".encode()))
        return cls(
            plugin,
            options,
            "audit" if post_stream == "audit" else "buffer",
            {h: httpx.URL(f"{base}/hooks/{h}") for h in plugin.hooks},
            headers,
        )

    @property
    def name(self) -> str:
        return self.plugin.name


class HookClient:
    """Hook calls over a keep-alive transport of their own (not the upstreams': tests replace that one),
    timed and counted in ``gateway_plugin_*``."""

    def __init__(self, transport: FastTransport, metrics: Metrics) -> None:
        self._transport = transport
        self._metrics = metrics

    async def call(self, target: Target, hook: HookName, payload: dict[str, Any], deadline: float) -> Answer:
        """Call one hook; ``deadline`` (monotonic) is the request's, which caps the plugin's ``timeout_s``."""
        name = target.name
        budget = min(target.plugin.timeout_s, deadline - time.monotonic())
        started = time.perf_counter()
        try:
            if budget <= 0:
                raise HookFailed("timeout", "the request's deadline passed before the call")
            body = orjson.dumps(payload)
            try:
                async with asyncio.timeout(budget):
                    status, _, raw = await self._transport.fetch(
                        target.urls[hook], target.headers, body, budget, MAX_ANSWER_BYTES, 4096
                    )
            except (TimeoutError, httpx.TimeoutException) as exc:
                if budget < target.plugin.timeout_s:  # the request's deadline cut it: say so by the clock
                    await passed(deadline)
                raise HookFailed("timeout", f"no answer within {budget:.3f}s") from exc
            except httpx.ConnectError as exc:
                raise HookFailed("connect", str(exc)) from exc
            except httpx.TransportError as exc:
                raise HookFailed("invalid", f"{type(exc).__name__}: {exc}") from exc
            if status != 200:
                raise HookFailed("status", f"answered HTTP {status}")
            answer = parse_answer(hook, raw)
        except HookFailed as failed:
            self.count_error(target, hook, failed.reason)
            raise
        finally:
            self._metrics.child(self._metrics.plugin_duration, name, hook).observe(
                time.perf_counter() - started
            )
        self._metrics.child(self._metrics.plugin_actions, name, hook, answer.action).inc()
        return answer

    def count_error(self, target: Target, hook: str, reason: Reason) -> None:
        self._metrics.child(self._metrics.plugin_errors, target.name, hook, reason).inc()


def parse_answer(hook: str, raw: bytes) -> Answer:
    """The answer a sidecar sent, or ``HookFailed("invalid")`` naming what broke the contract."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HookFailed("invalid", "the answer is not JSON") from exc
    if not isinstance(data, dict):
        raise HookFailed("invalid", "the answer is not a JSON object")
    action = data.get("action")
    if not isinstance(action, str) or action not in _ACTIONS[hook]:
        raise HookFailed("invalid", f"action {action!r} is not one a {hook} hook may answer")
    annotations = data.get("annotations", {})
    if not isinstance(annotations, dict) or any(isinstance(v, dict | list) for v in annotations.values()):
        raise HookFailed("invalid", "annotations must be a flat JSON object")
    if action == "continue":
        return Answer("continue", annotations=annotations)
    if action == "reject":
        status, code, message = data.get("status"), data.get("code"), data.get("message")
        # A post hook may stand for a bad upstream answer (guard's 502 invalid_output): 4xx or 5xx there.
        top = 599 if hook == "post" else 499
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= top:
            raise HookFailed("invalid", f"reject needs a {'4xx or 5xx' if hook == 'post' else '4xx'} status")
        if code is not None and not isinstance(code, str):
            raise HookFailed("invalid", "reject's code must be a string")
        if not isinstance(message, str) or not message:
            raise HookFailed("invalid", "reject needs a message")
        review_id, retry = data.get("review_id"), data.get("retry")
        if review_id is not None and not (isinstance(review_id, str) and _ID_OK.fullmatch(review_id)):
            raise HookFailed("invalid", "reject's review_id must be 1-128 of [A-Za-z0-9._:-]")
        if retry is not None and not isinstance(retry, bool):
            raise HookFailed("invalid", "reject's retry must be true or false")
        return Answer(
            "reject",
            status=status,
            code=code,
            message=message,
            annotations=annotations,
            review_id=review_id,
            retry=retry,
        )
    field_name = "response" if action == "respond" else MODIFIES[hook]
    value = data.get(field_name)
    if not isinstance(value, dict):
        raise HookFailed("invalid", f"{action} needs {field_name!r} (an object)")
    _check_value(field_name, value)
    return Answer("modify" if action == "modify" else "respond", value, annotations=annotations)


def _check_value(field_name: str, value: dict[str, Any]) -> None:
    """The shape the pipeline relies on; the rest of a request or answer is the upstream's to judge."""
    if field_name == "request":
        messages = value.get("messages")
        prompt = value.get("prompt")
        if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)) and (
            prompt is None
        ):
            raise HookFailed("invalid", "a modified request needs a non-empty 'messages' list of objects")
    elif field_name == "response":
        choices = value.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
            raise HookFailed("invalid", "a response needs a non-empty 'choices' list of objects")
        for c in choices:
            msg = c.get("message")
            text = c.get("text")
            if not isinstance(msg, dict) and not isinstance(text, str):
                raise HookFailed("invalid", "each choice needs a 'message' object (or 'text')")
    else:
        if not isinstance(value.get("name"), str):
            raise HookFailed("invalid", "a tool_call needs 'name' (a string)")
        value["arguments"] = _tool_arguments(value.get("arguments"))


def _tool_arguments(arguments: object) -> str:
    """A modified tool call's ``arguments`` as the JSON string the call runs with. Reviewers edit an
    object and send it as one as often as the OpenAI wire's JSON string: both are taken (an object is
    serialized canonically: compact, keys sorted); anything that is not a JSON object is refused here,
    with why, rather than reaching the tool."""
    if isinstance(arguments, dict):
        try:
            return orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError as err:  # e.g. an integer past 64 bits
            raise HookFailed("invalid", f"a tool_call's arguments cannot be serialized: {err}") from None
    if not isinstance(arguments, str):
        raise HookFailed("invalid", "a tool_call needs 'arguments': a JSON object, or a JSON string of one")
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise HookFailed("invalid", "a tool_call's arguments string is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise HookFailed("invalid", "a tool_call's arguments must be a JSON object")
    return arguments
