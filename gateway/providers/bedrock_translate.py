"""OpenAI chat request → Bedrock Converse request. Pure: no I/O.

Answers come back through ``bedrock_response`` (whole, event by event, and errors). The Converse shapes
follow the Bedrock Runtime API reference (botocore's ``bedrock-runtime`` service model): ``messages``
of ``{role, content: [ContentBlock]}``, ``system: [{text}]``, ``inferenceConfig`` and ``toolConfig``;
the model id travels in the URL, not the body.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import BadRequest

JSON_TOOL = "json_response"
"""The tool a ``json_schema`` request is forced through; its input comes back as the answer's text."""

JSON_OBJECT_INSTRUCTION = "Respond with one valid JSON object and nothing else: no prose, no code fences."
JSON_SCHEMA_INSTRUCTION = (
    "Respond with one JSON value that conforms to this JSON Schema and nothing else: no prose, no code "
    "fences.\n"
)
_JSON_TOOL_DESCRIPTION = "Give the answer: its input is the response, in the required JSON shape."

_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif"}
_IMAGE_FORMATS["image/webp"] = "webp"
_DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "text/html": "html",
    "text/plain": "txt",
    "text/markdown": "md",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
}
# Bedrock's document names: alphanumerics, single spaces, hyphens, parentheses and square brackets.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9\-\(\)\[\] ]+")

# Model-specific knobs a caller reaches through the OpenAI SDK's extra_body (Claude's ``top_k`` and extended
# ``thinking``): Converse carries them in additionalModelRequestFields, sent only when the client set them.
_MODEL_FIELDS = ("top_k", "thinking")

_USER_PARTS = frozenset({"text", "image_url", "file"})
_ASSISTANT_PARTS = frozenset({"text", "refusal"})
_TEXT_PARTS = frozenset({"text"})


def forces_json(body: Mapping[str, Any]) -> bool:
    """Whether ``response_format`` is served by forcing the ``JSON_TOOL`` tool: a ``json_schema`` whose
    root is an object (a tool's input is one), in a request without tools of its own."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or body.get("tools"):
        return False
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return isinstance(schema, dict) and schema.get("type") == "object"


def to_converse_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """Translate an OpenAI chat-completions body into a Converse body (without ``modelId``: it goes in
    the URL).

    System and developer messages become ``system``; tool messages become ``toolResult`` blocks of a
    user turn; consecutive turns of one role are merged (Converse requires alternation). Images and
    documents go inline as bytes (base64 in JSON): Converse cannot fetch a URL, so a remote image is a
    400. ``response_format: json_schema`` forces a tool whose input schema is the client's schema when
    ``forces_json`` (the model must answer in that shape: its tool input comes back as the answer's
    text); otherwise, and for
    ``json_object``, it becomes an instruction appended to the system prompt. ``temperature`` is clamped
    to 1 (the top of every Bedrock model's range). Fields Converse has no slot for (``seed``,
    ``logprobs``, penalties, ``user``…) are dropped; ``top_k`` and ``thinking`` (extra_body) go into
    ``additionalModelRequestFields`` for the models that take them.
    """
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("n: Bedrock returns one choice per request; only n=1 is supported", param="n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: must be a non-empty array", param="messages")
    system, turns, uses_tools = _messages(messages)
    out: dict[str, Any] = {"messages": turns}
    tools = body.get("tools")
    fmt = _format(body.get("response_format"))
    forced = fmt is not None and forces_json(body)
    if fmt is not None and not forced:
        system.append({"text": fmt[1]})
    if system:
        out["system"] = system
    config = _inference_config(body)
    if config:
        out["inferenceConfig"] = config
    extra = {key: body[key] for key in _MODEL_FIELDS if body.get(key) is not None}
    if extra:
        out["additionalModelRequestFields"] = extra
    if forced and fmt is not None:
        spec = {"name": JSON_TOOL, "description": _JSON_TOOL_DESCRIPTION, "inputSchema": {"json": fmt[2]}}
        out["toolConfig"] = {"tools": [{"toolSpec": spec}], "toolChoice": {"tool": {"name": JSON_TOOL}}}
    elif tools:
        tool_config = _tool_config(tools, body.get("tool_choice"), uses_tools)
        if tool_config is not None:
            out["toolConfig"] = tool_config
    return out


def _bad(path: str, problem: str) -> BadRequest:
    return BadRequest(f"{path}: {problem}", param=path)


def _messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    uses_tools = False
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
        uses_tools = uses_tools or role == "tool" or bool(msg.get("tool_calls"))
        if not blocks:
            continue  # Converse rejects empty content; an empty turn carries nothing anyway
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    return system, turns, uses_tools


def _blocks(content: Any, path: str, allowed: frozenset[str], *, cache: bool = True) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
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
                continue  # Converse rejects a blank text block
            blocks.append({"text": text})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{part_path}.image_url"))
        else:
            blocks.append(_document(part.get("file"), f"{part_path}.file", len(blocks)))
        # Anthropic's cache breakpoint on a part (as the anthropic adapter keeps it) is Converse's
        # cachePoint block right after it: prompt caching is most of a long conversation's cost.
        if cache and isinstance(part.get("cache_control"), dict):
            blocks.append({"cachePoint": {"type": "default"}})
    return blocks


def _image(image: Any, path: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _bad(f"{path}.url", "must be a string")
    if not url.startswith("data:"):
        raise _bad(
            f"{path}.url",
            "Bedrock takes images inline only: send a base64 data: URL (Converse cannot fetch a URL)",
        )
    media_type, data = _data_url(url, f"{path}.url")
    fmt = _IMAGE_FORMATS.get(media_type.lower())
    if fmt is None:
        raise _bad(f"{path}.url", f"image type {media_type!r} is not supported (png, jpeg, gif, webp)")
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _document(file: Any, path: str, position: int) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise _bad(f"{path}.file_data", "Bedrock takes files inline only, as a base64 data: URL")
    media_type, data = _data_url(data_url, f"{path}.file_data")
    fmt = _DOCUMENT_FORMATS.get(media_type.lower())
    if fmt is None:
        raise _bad(f"{path}.file_data", f"document type {media_type!r} is not supported by Bedrock")
    filename = file.get("filename") if isinstance(file, dict) else None
    stem = filename.rsplit(".", 1)[0] if isinstance(filename, str) else ""
    name = " ".join(_NAME_UNSAFE.sub(" ", stem).split())[:200] or f"document {position + 1}"
    return {"document": {"format": fmt, "name": name, "source": {"bytes": data}}}


def _data_url(url: str, path: str) -> tuple[str, str]:
    header, comma, data = url[len("data:") :].partition(",")
    media_type = header.split(";", 1)[0]
    if not comma or not media_type or not header.endswith(";base64") or not data:
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
        # Models emit "" for a call without arguments; Converse needs a JSON document either way.
        try:
            args = orjson.loads(args) if args.strip() else {}
        except orjson.JSONDecodeError:
            raise _bad(f"{path}.function.arguments", "is not valid JSON") from None
    elif args is None:
        args = {}
    if not isinstance(args, dict):
        raise _bad(f"{path}.function.arguments", "must encode a JSON object")
    return {"toolUse": {"toolUseId": call_id, "name": name, "input": args}}


def _tool_result(msg: dict[str, Any], path: str) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{path}.tool_call_id", "must be a non-empty string")
    content = msg.get("content")
    blocks = _blocks(content, f"{path}.content", _TEXT_PARTS, cache=False)  # no cachePoint in a result
    # A tool that returned nothing still answered: Converse needs at least one block.
    return {"toolResult": {"toolUseId": call_id, "content": blocks or [{"text": ""}]}}


def _tool_config(tools: Any, choice: Any, uses_tools: bool) -> dict[str, Any] | None:
    if not isinstance(tools, list):
        raise _bad("tools", "must be an array")
    specs: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        path = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f"{path}.type", "only function tools are supported")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"{path}.function.name", "must be a non-empty string")
        spec: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str) and fn["description"]:
            spec["description"] = fn["description"]
        # inputSchema is required; OpenAI allows omitting parameters for a tool without arguments.
        spec["inputSchema"] = {"json": fn.get("parameters") or {"type": "object", "properties": {}}}
        specs.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    if choice is None or choice == "auto":
        return config  # Converse's default is auto; not sending it suits models without toolChoice
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice == "none":
        # Converse has no "none": leave the tools out, unless the history holds tool blocks, which
        # Converse accepts only with a toolConfig (then the model is free to call, as with auto).
        return config if uses_tools else None
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
    else:
        raise _bad("tool_choice", "must be 'auto', 'required', 'none' or {type: function, function: {name}}")
    return config


def _inference_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _bad(key, "must be a positive integer")
        config["maxTokens"] = value
        break
    for key, name in (("temperature", "temperature"), ("top_p", "topP")):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _bad(key, "must be a number")
        # OpenAI's temperature goes to 2, Bedrock's models top out at 1: clamping keeps "most random".
        config[name] = min(value, 1) if key == "temperature" else value
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            config["stopSequences"] = stop
    elif stop is not None:
        raise _bad("stop", "must be a string or an array of strings")
    return config


def _format(fmt: Any) -> tuple[str, str, dict[str, Any]] | None:
    """``(kind, instruction, schema)`` for a JSON ``response_format``; None for text or none."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return kind, JSON_OBJECT_INSTRUCTION, {}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _bad("response_format.json_schema.schema", "must be an object")
        return kind, JSON_SCHEMA_INSTRUCTION + orjson.dumps(schema).decode(), schema
    raise _bad("response_format.type", "must be 'text', 'json_object' or 'json_schema'")
