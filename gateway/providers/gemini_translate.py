"""OpenAI chat / embeddings request → Gemini ``generateContent`` / embeddings request. Pure: no I/O.

Answers come back through ``gemini_response``. The same bodies serve the Gemini API and Vertex AI
(``vertex``): both take ``GenerateContentRequest`` in camelCase JSON.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import BadRequest
from gateway.providers.gemini_schema import to_gemini_schema

SKIP_SIGNATURE = "skip_thought_signature_validator"
"""The value Google documents for a function call whose thought signature is not known (a history
from another model, or a client that dropped it): Gemini 3 refuses an unsigned call in history."""

GOOGLE_EXTRA = "extra_content"
"""Where a tool call carries Gemini's thought signature in OpenAI form, as Google's own
OpenAI-compatible endpoint puts it: ``extra_content: {google: {thought_signature}}``."""

_USER_PARTS = frozenset({"text", "image_url", "file", "input_audio"})
_MAX_STOP = 5  # Gemini's limit on stopSequences

# Gemini knobs a caller reaches through the OpenAI SDK's extra_body (they mean nothing to OpenAI).
_TOP_PASSTHROUGH = {"safety_settings": "safetySettings", "cached_content": "cachedContent"}
_CONFIG_PASSTHROUGH = {"top_k": "topK", "thinking_config": "thinkingConfig"}


def to_gemini_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """Translate an OpenAI chat-completions body into a Gemini ``GenerateContentRequest``.

    System and developer messages become ``systemInstruction``; assistant turns are ``role: model``;
    consecutive turns of one role are merged (Gemini wants user/model alternation). Tool results
    become ``functionResponse`` parts named after the call they answer, found by ``tool_call_id``
    among the assistant's earlier ``tool_calls`` (Gemini matches responses to calls by name and
    order). Images go inline (``data:`` URLs) or by reference (``gs://`` and Files API URIs);
    other http(s) URLs are refused, because Gemini does not fetch them and the gateway will not.
    ``response_format`` becomes ``responseMimeType`` (+ ``responseSchema``). ``n > 1`` is refused.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: must be a non-empty string", param="model")
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest(
            "n: Gemini models are served one choice per request; only n=1 is supported", param="n"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: must be a non-empty array", param="messages")

    system, contents = _messages(messages)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools = body.get("tools")
    if tools:
        out["tools"] = [{"functionDeclarations": _tools(tools)}]
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["toolConfig"] = {"functionCallingConfig": choice}
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    for key, wire in _TOP_PASSTHROUGH.items():
        value = body.get(key, body.get(wire))
        if value is not None:
            out[wire] = value
    return out


def _bad(path: str, problem: str) -> BadRequest:
    return BadRequest(f"{path}: {problem}", param=path)


def _messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call id -> function name, from earlier assistant turns
    for i, msg in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(path, "must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_parts(msg.get("content"), f"{path}.content", frozenset({"text"})))
            continue
        if role == "user":
            turn, parts = "user", _parts(msg.get("content"), f"{path}.content", _USER_PARTS)
        elif role == "assistant":
            turn, parts = "model", _model_parts(msg, path, call_names)
        elif role == "tool":
            turn, parts = "user", [_function_response(msg, path, call_names)]
        else:
            raise _bad(f"{path}.role", f"unsupported role {role!r}")
        if not parts:
            continue  # Gemini refuses a turn without parts; an empty one carries nothing anyway
        if contents and contents[-1]["role"] == turn:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": turn, "parts": parts})
    if not contents:
        raise _bad("messages", "must hold at least one user or assistant message with content")
    return system, contents


def _parts(content: Any, path: str, allowed: frozenset[str]) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(path, "must be a string or an array of content parts")
    parts: list[dict[str, Any]] = []
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
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            parts.append(_image(part.get("image_url"), f"{part_path}.image_url"))
        elif kind == "input_audio":
            parts.append(_audio(part.get("input_audio"), f"{part_path}.input_audio"))
        else:
            parts.append(_file(part.get("file"), f"{part_path}.file"))
    return parts


def _image(image: Any, path: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _bad(f"{path}.url", "must be a string")
    if url.startswith("data:"):
        return _inline(url, f"{path}.url")
    if url.startswith(("gs://", "https://generativelanguage.googleapis.com/")):
        mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise _bad(
        f"{path}.url",
        "Gemini models take images inline as a base64 data: URL, or as a gs:// or Files API URI; "
        "fetch the image and send it as data:<media type>;base64,<data>",
    )


def _file(file: Any, path: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise _bad(f"{path}.file_data", "Gemini models take files inline as a base64 data: URL")
    return _inline(data_url, f"{path}.file_data")


def _audio(audio: Any, path: str) -> dict[str, Any]:
    data = audio.get("data") if isinstance(audio, dict) else None
    fmt = audio.get("format") if isinstance(audio, dict) else None
    if not isinstance(data, str) or fmt not in ("wav", "mp3"):
        raise _bad(path, "must be {data: <base64>, format: 'wav' | 'mp3'}")
    return {"inlineData": {"mimeType": f"audio/{fmt}", "data": data}}


def _inline(url: str, path: str) -> dict[str, Any]:
    header, comma, data = url[len("data:") :].partition(",")
    mime = header.split(";", 1)[0]
    if not comma or not mime or not header.endswith(";base64"):
        raise _bad(path, "data URLs must look like 'data:<media type>;base64,<data>'")
    return {"inlineData": {"mimeType": mime, "data": data}}


def _model_parts(msg: dict[str, Any], path: str, call_names: dict[str, str]) -> list[dict[str, Any]]:
    parts = _parts(msg.get("content"), f"{path}.content", frozenset({"text", "refusal"}))
    calls = msg.get("tool_calls")
    if calls is None:
        return parts
    if not isinstance(calls, list):
        raise _bad(f"{path}.tool_calls", "must be an array")
    for k, call in enumerate(calls):
        part = _function_call(call, f"{path}.tool_calls[{k}]")
        call_names[call["id"]] = part["functionCall"]["name"]
        if k == 0 and "thoughtSignature" not in part:
            # Only a turn's first call is signed; a call replayed without its signature gets the
            # documented bypass rather than a 400 from Gemini 3 models.
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
    return parts


def _function_call(call: Any, path: str) -> dict[str, Any]:
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
        try:
            args = orjson.loads(args) if args.strip() else {}
        except orjson.JSONDecodeError:
            raise _bad(f"{path}.function.arguments", "is not valid JSON") from None
    elif args is None:
        args = {}
    if not isinstance(args, dict):
        raise _bad(f"{path}.function.arguments", "must encode a JSON object")
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    extra = call.get(GOOGLE_EXTRA)
    # "google" as the Gemini API's OpenAI endpoint writes it, "vertex" as Vertex AI's does
    for key in ("google", "vertex"):
        found = extra.get(key) if isinstance(extra, dict) else None
        signature = found.get("thought_signature") if isinstance(found, dict) else None
        if isinstance(signature, str) and signature:
            part["thoughtSignature"] = signature
            break
    return part


def _function_response(msg: dict[str, Any], path: str, call_names: Mapping[str, str]) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{path}.tool_call_id", "must be a non-empty string")
    name = call_names.get(call_id)
    if name is None:
        raise _bad(
            f"{path}.tool_call_id",
            f"{call_id!r} answers no tool call of an earlier assistant message; Gemini matches tool "
            "results to calls by function name, so the call must be in the conversation",
        )
    content = msg.get("content")
    if isinstance(content, list):
        content = "".join(p["text"] for p in _parts(content, f"{path}.content", frozenset({"text"})))
    if not isinstance(content, str):
        raise _bad(f"{path}.content", "must be a string or an array of text parts")
    # Gemini wants an object: a JSON object result goes as is, anything else under "output" (the key
    # Google's function-calling guide uses for a function's result).
    try:
        parsed = orjson.loads(content) if content.strip().startswith("{") else None
    except orjson.JSONDecodeError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"output": content}
    return {"functionResponse": {"name": name, "response": response}}


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
        declaration: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            declaration["description"] = fn["description"]
        params = fn.get("parameters")
        # A tool without parameters is declared without them (Gemini refuses an empty OBJECT).
        if isinstance(params, dict) and params.get("properties"):
            declaration["parameters"] = to_gemini_schema(params, f"{path}.function.parameters")
        out.append(declaration)
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "required", "none"):
        return {"mode": {"auto": "AUTO", "required": "ANY", "none": "NONE"}[choice]}
    fn = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return {"mode": "ANY", "allowedFunctionNames": [fn["name"]]}
    raise _bad("tool_choice", "must be 'auto', 'required', 'none' or {type: function, function: {name}}")


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop", "must be a string or an array of strings")
        if len(stop) > _MAX_STOP:
            raise _bad("stop", f"Gemini models take at most {_MAX_STOP} stop sequences")
        if stop:
            config["stopSequences"] = stop
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _bad(key, "must be a positive integer")
        config["maxOutputTokens"] = value
        break
    numbers = {
        "temperature": "temperature",
        "top_p": "topP",
        "presence_penalty": "presencePenalty",
        "frequency_penalty": "frequencyPenalty",
        "seed": "seed",
    }
    for key, wire in numbers.items():
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _bad(key, "must be a number")
        config[wire] = value
    for key, wire in _CONFIG_PASSTHROUGH.items():
        value = body.get(key, body.get(wire))
        if value is not None:
            config[wire] = value
    config.update(_response_format(body.get("response_format")))
    return config


def _response_format(fmt: Any) -> dict[str, Any]:
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _bad("response_format.json_schema.schema", "must be an object")
        path = "response_format.json_schema.schema"
        return {
            "responseMimeType": "application/json",
            "responseSchema": to_gemini_schema(schema, path, ordered=True),
        }
    raise _bad("response_format.type", "must be 'text', 'json_object' or 'json_schema'")


# --- embeddings -------------------------------------------------------------------------------------


def embedding_inputs(body: Mapping[str, Any]) -> list[str]:
    """The texts of an OpenAI embeddings body; token-id inputs are refused (Gemini takes text only)."""
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise _bad("input", "Gemini embedding models take a string or an array of strings")
    return inputs


def to_batch_embed_request(body: Mapping[str, Any], model_path: str) -> dict[str, Any]:
    """OpenAI embeddings → ``batchEmbedContents``: one request per input, ``dimensions`` as
    ``outputDimensionality``; ``model_path`` is ``models/<name>``, repeated in each request."""
    extra: dict[str, Any] = {}
    if body.get("dimensions") is not None:
        extra["outputDimensionality"] = body["dimensions"]
    task = body.get("task_type", body.get("taskType"))
    if isinstance(task, str):
        extra["taskType"] = task
    requests = [
        {"model": model_path, "content": {"parts": [{"text": t}]}, **extra} for t in embedding_inputs(body)
    ]
    return {"requests": requests}


def to_predict_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI embeddings → Vertex ``predict`` for text-embedding models: one instance per input."""
    task = body.get("task_type", body.get("taskType"))
    instances = [
        {"content": t, **({"task_type": task} if isinstance(task, str) else {})}
        for t in embedding_inputs(body)
    ]
    out: dict[str, Any] = {"instances": instances}
    if body.get("dimensions") is not None:
        out["parameters"] = {"outputDimensionality": body["dimensions"]}
    return out
