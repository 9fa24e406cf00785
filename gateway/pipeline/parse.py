"""Stage 1, parse: body size limit, JSON, and the few fields the gateway needs.

The body is never validated against a closed schema: apps add fields with ``extra_body`` and they
must reach the upstream untouched. Only what routing, admission and streaming read is checked, plus
the numeric fields OpenAI defines with a range (``n``, ``max_tokens``, ``temperature``, ``dimensions``...),
answered with OpenAI's own 400 codes: an upstream would refuse them anyway, and ``n`` and ``max_tokens``
size the budget reservation, so they must be sane before admission.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.logs import clip
from gateway.providers.base import Operation


@dataclass(slots=True)
class ParsedRequest:
    operation: Operation
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    task: str | None
    prompt_tokens: int | None = None
    """The prompt's tiktoken count once admission made it, so dispatch need not count again."""


class Incoming(Protocol):
    """A request as the pipeline reads it, whichever server received it (ASGI or the native path)."""

    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up by lower-case name; the first of repeated headers."""
        ...

    async def body(self, limit: int) -> bytes:
        """The whole body; ``PayloadTooLarge`` (via ``check_size``) once it passes ``limit`` bytes."""
        ...


def check_size(size: int, limit: int) -> None:
    if size > limit:
        raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")


def check_declared_size(headers: Mapping[str, str], limit: int) -> None:
    """Refuse a body whose Content-Length is over the limit before reading any of it."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit():
        check_size(int(declared), limit)


async def read_json(request: Incoming, limit: int) -> dict[str, Any]:
    """Read at most ``limit`` bytes of a JSON object body, or raise 413/400."""
    return json_object(await request.body(limit))


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body as the JSON object it must be, or a 400."""
    if not raw.strip():
        raise BadRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def parse(operation: Operation, body: dict[str, Any], headers: Mapping[str, str]) -> ParsedRequest:
    model = body.get("model")
    if model is None:
        raise _field("model", "", missing=True)
    if not isinstance(model, str) or not model:
        raise _field("model", "must be a non-empty string")
    if operation is Operation.CHAT:
        _chat_fields(body)
    elif operation is Operation.COMPLETIONS:
        _require(body, "prompt", (str, list))
    else:
        inputs = _require(body, "input", (str, list))
        if inputs == [] or inputs == "":
            raise _field("input", "must not be empty")
        if (
            isinstance(inputs, list)
            and len(inputs) > MAX_EMBEDDING_INPUTS
            and isinstance(inputs[0], str | list)
        ):
            raise _field("input", f"must hold at most {MAX_EMBEDDING_INPUTS} inputs, got {len(inputs)}")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _field("stream", "must be a boolean")
    if operation is Operation.EMBEDDINGS and stream:
        raise _field("stream", "embeddings cannot be streamed")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _field("stream_options", "must be an object")
    include_usage = bool(stream) and isinstance(options, dict) and options.get("include_usage") is True
    ranges = _RANGES[operation]
    for name, value in body.items():  # a body has a few fields; the table has more
        bounds = ranges.get(name)
        if bounds is None or value is None:
            continue
        low, high, integer = bounds
        kind = type(value)
        if (kind is int or (kind is float and not integer)) and (
            (low is None or value >= low) and (high is None or value <= high)
        ):
            continue  # the usual case: a number in range
        _check_range(name, value, low, high, integer)
    task = headers.get("x-gateway-task") or None
    return ParsedRequest(operation, body, model, bool(stream), include_usage, task)


MAX_CHOICES = 128
"""``n``: OpenAI's own bound (``integer_above_max_value``)."""
MAX_BEST_OF = 20
MAX_OUTPUT_TOKENS = 10_000_000
"""``max_tokens`` / ``max_completion_tokens``: far above any model's output, but a bound, so that a
reservation (``choices × max_tokens × price``) stays an exact integer in the store's Lua."""
MAX_DIMENSIONS = 65_536
"""``dimensions`` of embeddings: above every embedding model's size (the largest are 4-12 k)."""
MAX_EMBEDDING_INPUTS = 2048
"""Inputs in one embeddings request: OpenAI's own bound."""

# field → (lowest, highest, integer?) per operation: only fields the request carries are checked, and
# only those OpenAI defines with a range; anything else passes through untouched.
_Range = tuple[float | None, float | None, bool]
_SAMPLING: dict[str, _Range] = {
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "presence_penalty": (-2, 2, False),
    "frequency_penalty": (-2, 2, False),
    "seed": (None, None, True),
}
_RANGES: dict[Operation, dict[str, _Range]] = {
    Operation.CHAT: {
        "max_tokens": (1, MAX_OUTPUT_TOKENS, True),
        "max_completion_tokens": (1, MAX_OUTPUT_TOKENS, True),
        "n": (1, MAX_CHOICES, True),
        "top_logprobs": (0, 20, True),
        **_SAMPLING,
    },
    Operation.COMPLETIONS: {
        # 0 is allowed here: with ``echo`` it scores the prompt without generating
        "max_tokens": (0, MAX_OUTPUT_TOKENS, True),
        "n": (1, MAX_CHOICES, True),
        "best_of": (1, MAX_BEST_OF, True),
        "logprobs": (0, 5, True),
        **_SAMPLING,
    },
    Operation.EMBEDDINGS: {"dimensions": (1, MAX_DIMENSIONS, True)},
}


def _check_range(name: str, value: Any, low: float | None, high: float | None, integer: bool) -> None:
    """OpenAI's 400s for a numeric field: ``invalid_type``, ``integer_below_min_value``,
    ``decimal_above_max_value``, ... with ``param`` the field."""
    kind = "integer" if integer else "decimal"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        got = "a string" if isinstance(value, str) else f"'{type(value).__name__}'"
        expected = "an integer" if integer else "a number"
        raise BadRequest(
            f"Invalid type for '{name}': expected {expected}, but got {got} instead.",
            param=name,
            code="invalid_type",
        )
    if value != value or value in (math.inf, -math.inf):
        raise BadRequest(f"Invalid '{name}': must be a finite number.", param=name, code="invalid_value")
    if low is not None and value < low:
        raise BadRequest(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {_num(low)}, "
            f"but got {value} instead.",
            param=name,
            code=f"{kind}_below_min_value",
        )
    if high is not None and value > high:
        raise BadRequest(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {_num(high)}, "
            f"but got {value} instead.",
            param=name,
            code=f"{kind}_above_max_value",
        )


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def _chat_fields(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise _field("messages", "", missing=True)
    if not isinstance(messages, list):
        raise _type("messages", "an array", messages)
    if not messages:
        raise BadRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
            "array instead.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        # the usual message, {"role": ..., "content": "..."} and nothing else, costs a few checks
        if (
            type(message) is dict
            and len(message) == 2
            and type(message.get("content")) is str
            and message.get("role") in _PLAIN_ROLES
        ):
            continue
        _check_message(i, message)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _field("tools", "must be an array")


# What OpenAI's chat endpoint checks of a message, with its codes and ``param`` paths; fields it does
# not define still pass through (a provider may read them).
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_PLAIN_ROLES = ("user", "assistant", "system", "developer")
"""Roles for which a string ``content`` is all a message needs (a tuple: ``in`` must not hash a role
that is not a string)."""
_PART_TYPES: dict[str, tuple[str, ...]] = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
    "function": ("text",),
}
_PART_PAYLOAD = {t: t for t in ("text", "image_url", "input_audio", "file", "refusal")}
"""The field each content part type carries its payload in: the type's own name."""


def _check_message(i: int, message: Any) -> None:
    at = f"messages[{i}]"
    if not isinstance(message, dict):
        raise _type(at, "an object", message)
    role = message.get("role")
    if role is None:
        raise _field(f"{at}.role", "", missing=True)
    if role not in _ROLES:
        raise _choice(f"{at}.role", role, _ROLES)
    content = message.get("content")
    if role == "assistant":
        calls = message.get("tool_calls")
        if calls is not None:
            _check_tool_calls(at, calls)
        if content is None and calls is None and message.get("function_call") is None:
            if message.get("refusal") is None:
                raise _field(f"{at}.content", "", missing=True)
            return
    elif content is None:
        raise _field(f"{at}.content", "", missing=True)
    if role == "tool" and message.get("tool_call_id") is None:
        raise _field(f"{at}.tool_call_id", "", missing=True)
    if role == "function" and message.get("name") is None:
        raise _field(f"{at}.name", "", missing=True)
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _type(f"{at}.content", "one of a string or array of objects", content)
    if not content and role != "assistant":
        raise BadRequest(
            f"Invalid '{at}.content': empty array. Expected an array with minimum length 1, but got an "
            "empty array instead.",
            param=f"{at}.content",
            code="empty_array",
        )
    allowed = _PART_TYPES[role]
    for j, part in enumerate(content):
        where = f"{at}.content[{j}]"
        if not isinstance(part, dict):
            raise _type(where, "an object", part)
        kind = part.get("type")
        if kind is None:
            raise _field(f"{where}.type", "", missing=True)
        if kind not in allowed:
            raise _choice(f"{where}.type", kind, allowed)
        payload = _PART_PAYLOAD[kind]
        if part.get(payload) is None:
            raise _field(f"{where}.{payload}", "", missing=True)
        if kind == "text" and not isinstance(part["text"], str):
            raise _type(f"{where}.text", "a string", part["text"])


def _check_tool_calls(at: str, calls: Any) -> None:
    if not isinstance(calls, list):
        raise _type(f"{at}.tool_calls", "an array", calls)
    for k, call in enumerate(calls):
        where = f"{at}.tool_calls[{k}]"
        if not isinstance(call, dict):
            raise _type(where, "an object", call)
        for name in ("id", "type"):
            if call.get(name) is None:
                raise _field(f"{where}.{name}", "", missing=True)
        kind = call["type"]
        if kind not in ("function", "custom"):
            raise _choice(f"{where}.type", kind, ("function", "custom"))
        spec = call.get(kind)
        if spec is None:
            raise _field(f"{where}.{kind}", "", missing=True)
        if not isinstance(spec, dict):
            raise _type(f"{where}.{kind}", "an object", spec)
        for name in ("name", "arguments") if kind == "function" else ("name",):
            if spec.get(name) is None:
                raise _field(f"{where}.{kind}.{name}", "", missing=True)
            if not isinstance(spec[name], str):
                raise _type(f"{where}.{kind}.{name}", "a string", spec[name])


def _type(param: str, expected: str, value: Any) -> BadRequest:
    return BadRequest(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _choice(param: str, value: Any, allowed: tuple[str, ...]) -> BadRequest:
    quoted = [f"'{a}'" for a in allowed]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f", and {quoted[-1]}"
    shown = f"'{clip(value)}'" if isinstance(value, str) else repr(value)[:64]
    return BadRequest(
        f"Invalid value: {shown}. Supported values are: {listed}.", param=param, code="invalid_value"
    )


def _kind(value: Any) -> str:
    """OpenAI's wording for what it got: ``a string``, ``an integer``, ``an object``..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else f"'{type(value).__name__}'"


def _require(body: dict[str, Any], name: str, types: tuple[type, ...]) -> Any:
    if name not in body or body[name] is None:
        raise _field(name, "is a required property", missing=True)
    value = body[name]
    if not isinstance(value, types):
        kinds = " or ".join("a string" if t is str else "an array" for t in types)
        raise _field(name, f"must be {kinds}")
    return value


def _field(param: str, problem: str, *, missing: bool = False) -> BadRequest:
    message = f"Missing required parameter: '{param}'." if missing else f"Invalid '{param}': {problem}."
    return BadRequest(message, param=param, code="missing_required_parameter" if missing else "invalid_value")
