"""OpenAI chat request → Anthropic Messages request. Pure: no I/O.

Answers come back through ``anthropic_response`` (whole, event by event, and errors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import BadRequest

# Anthropic-only knobs a caller can reach through the OpenAI SDK's extra_body; they mean nothing to OpenAI,
# so forwarding them cannot change the meaning of a portable request.
_PASSTHROUGH = ("top_k", "thinking")

_USER_PARTS = frozenset({"text", "image_url", "file"})
_ASSISTANT_PARTS = frozenset({"text", "refusal"})
_TEXT_PARTS = frozenset({"text"})

_JSON_OBJECT_INSTRUCTION = "Respond with one valid JSON object and nothing else: no prose, no code fences."
_JSON_SCHEMA_INSTRUCTION = (
    "Respond with one JSON value that conforms to this JSON Schema and nothing else: no prose, no code "
    "fences.\n"
)


# --- requests ---------------------------------------------------------------------------------------


def to_anthropic_request(body: Mapping[str, Any], *, default_max_tokens: int = 4096) -> dict[str, Any]:
    """Translate an OpenAI chat-completions body into an Anthropic Messages body.

    ``model`` is copied as is (the caller already resolved it to the Anthropic name). System and developer
    messages, wherever they appear, become the top-level ``system``; consecutive messages of one role are
    merged because Anthropic requires user/assistant alternation. Anthropic has no JSON mode, so a
    ``response_format`` of ``json_object`` or ``json_schema`` becomes an instruction appended to the system
    prompt (the schema included): the model is asked, not forced, to answer in JSON. ``temperature`` is
    clamped to Anthropic's range [0, 1]. OpenAI fields with no Anthropic counterpart (``seed``,
    ``logprobs``, penalties…) are dropped because Anthropic rejects unknown fields.

    Raises ``BadRequest`` naming the offending path (``messages[2].tool_calls[0].function.arguments``) for
    shapes that cannot be translated, and for ``n > 1``.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: must be a non-empty string", param="model")
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest(
            "n: Anthropic models return one choice per request; only n=1 is supported", param="n"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: must be a non-empty array", param="messages")

    system, turns = _messages(messages)
    system.extend(_format_instruction(body.get("response_format")))
    out: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(body, default_max_tokens)}
    if system:
        plain = len(system) == 1 and system[0].keys() == {"type", "text"}
        out["system"] = system[0]["text"] if plain else system
    out["messages"] = turns

    tools = body.get("tools")
    if tools:
        out["tools"] = _tools(tools)
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    # Without tools, tool_choice and parallel_tool_calls are meaningless and Anthropic rejects tool_choice.

    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            out["stop_sequences"] = stop
    elif stop is not None:
        raise BadRequest("stop: must be a string or an array of strings", param="stop")

    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise BadRequest(f"{key}: must be a number", param=key)
        # OpenAI's temperature goes to 2, Anthropic's to 1: clamping keeps "as random as possible".
        out[key] = min(value, 1) if key == "temperature" else value
    for key in _PASSTHROUGH:
        if body.get(key) is not None:
            out[key] = body[key]
    user = _end_user(body)
    if user:
        out["metadata"] = {"user_id": user}
    if body.get("stream"):
        out["stream"] = True
    return out


def _bad(path: str, problem: str) -> BadRequest:
    return BadRequest(f"{path}: {problem}", param=path)


def _messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(path, "must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_blocks(msg.get("content"), f"{path}.content", _TEXT_PARTS))
            continue
        if role == "user":
            turn_role, blocks = "user", _blocks(msg.get("content"), f"{path}.content", _USER_PARTS)
        elif role == "assistant":
            turn_role, blocks = "assistant", _assistant_blocks(msg, path)
        elif role == "tool":
            turn_role, blocks = "user", [_tool_result(msg, path)]
        else:
            raise _bad(f"{path}.role", f"unsupported role {role!r}")
        if not blocks:
            continue  # Anthropic rejects empty content; an empty turn carries nothing anyway
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    return system, turns


def _blocks(content: Any, path: str, allowed: frozenset[str]) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(path, "must be a string or an array of content parts")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        part_path = f"{path}[{j}]"
        if not isinstance(part, dict):
            raise _bad(part_path, "must be an object")
        kind = part.get("type")
        if kind not in allowed:
            raise _bad(f"{part_path}.type", f"content part {kind!r} is not supported here")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise _bad(f"{part_path}.{kind}", "must be a string")
            if not text:
                continue
            block: dict[str, Any] = {"type": "text", "text": text}
        elif kind == "image_url":
            block = _image(part.get("image_url"), f"{part_path}.image_url")
        else:
            block = _document(part.get("file"), f"{part_path}.file")
        # Prompt caching is Anthropic's biggest cost lever; keep a caller's breakpoint where they put it.
        if isinstance(part.get("cache_control"), dict):
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _image(image: Any, path: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _bad(f"{path}.url", "must be a string")
    if url.startswith("data:"):
        media_type, data = _data_url(url, f"{path}.url")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _bad(f"{path}.url", "must be an http(s) URL or a base64 data: URL")


def _document(file: Any, path: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise _bad(f"{path}.file_data", "Anthropic models take files inline as a base64 data: URL")
    media_type, data = _data_url(data_url, f"{path}.file_data")
    return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _data_url(url: str, path: str) -> tuple[str, str]:
    header, comma, data = url[len("data:") :].partition(",")
    media_type = header.split(";", 1)[0]
    if not comma or not media_type or not header.endswith(";base64"):
        raise _bad(path, "data URLs must look like 'data:<media type>;base64,<data>'")
    return media_type, data


def _assistant_blocks(msg: dict[str, Any], path: str) -> list[dict[str, Any]]:
    blocks = _blocks(msg.get("content"), f"{path}.content", _ASSISTANT_PARTS)
    calls = msg.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise _bad(f"{path}.tool_calls", "must be an array")
    for k, call in enumerate(calls):
        blocks.append(_tool_use(call, f"{path}.tool_calls[{k}]"))
    return blocks


def _tool_use(call: Any, path: str) -> dict[str, Any]:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise _bad(f"{path}.type", "only function tool calls are supported")
    fn = call.get("function")
    if not isinstance(fn, dict):
        raise _bad(f"{path}.function", "must be an object")
    call_id, name, args = call.get("id"), fn.get("name"), fn.get("arguments")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{path}.id", "must be a non-empty string")
    if not isinstance(name, str) or not name:
        raise _bad(f"{path}.function.name", "must be a non-empty string")
    if isinstance(args, str):
        # Models emit "" for a call without arguments; Anthropic needs an object either way.
        try:
            args = orjson.loads(args) if args.strip() else {}
        except orjson.JSONDecodeError:
            raise _bad(f"{path}.function.arguments", "is not valid JSON") from None
    elif args is None:
        args = {}
    if not isinstance(args, dict):
        raise _bad(f"{path}.function.arguments", "must encode a JSON object")
    return {"type": "tool_use", "id": call_id, "name": name, "input": args}


def _tool_result(msg: dict[str, Any], path: str) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{path}.tool_call_id", "must be a non-empty string")
    content = msg.get("content")
    result: str | list[dict[str, Any]] = (
        content if isinstance(content, str) else _blocks(content, f"{path}.content", _TEXT_PARTS)
    )
    return {"type": "tool_result", "tool_use_id": call_id, "content": result}


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools", "must be an array")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        path = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f"{path}.type", "only function tools are supported")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"{path}.function.name", "must be a non-empty string")
        definition: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            definition["description"] = fn["description"]
        # input_schema is required by Anthropic; OpenAI allows omitting parameters for a no-arg tool.
        definition["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
        out.append(definition)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    mapped: dict[str, Any] | None
    if choice is None:
        mapped = {"type": "auto"} if parallel is False else None
    elif choice in ("auto", "required", "none"):
        mapped = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        mapped = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise _bad("tool_choice", "must be 'auto', 'required', 'none' or {type: function, function: {name}}")
    if mapped is not None and parallel is False and mapped["type"] != "none":
        mapped["disable_parallel_tool_use"] = True
    return mapped


def _max_tokens(body: Mapping[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _bad(key, "must be a positive integer")
        return value
    return default


def _end_user(body: Mapping[str, Any]) -> str | None:
    meta = body.get("metadata")
    candidates = [meta.get("user"), meta.get("user_id")] if isinstance(meta, dict) else []
    candidates += [body.get("safety_identifier"), body.get("user")]
    return next((c for c in candidates if isinstance(c, str) and c), None)


def _format_instruction(fmt: Any) -> list[dict[str, Any]]:
    if fmt is None:
        return []
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return []
    if kind == "json_object":
        return [{"type": "text", "text": _JSON_OBJECT_INSTRUCTION}]
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _bad("response_format.json_schema.schema", "must be an object")
        return [{"type": "text", "text": _JSON_SCHEMA_INSTRUCTION + orjson.dumps(schema).decode()}]
    raise _bad("response_format.type", "must be 'text', 'json_object' or 'json_schema'")


# --- responses --------------------------------------------------------------------------------------
