"""OpenAI Responses ingress: ``POST /v1/responses`` bodies in, OpenAI chat bodies through, and back.

The pipeline speaks OpenAI chat only, so a Responses request is translated once on the way in
(``to_chat_request``) and the chat answer once on the way out (``to_response``; streams go through
``gateway.ingress.responses_stream.StreamTranslator``). Everything here is pure: dicts in, dicts
out, and errors are ``BadRequest`` whose ``param`` names the offending field (``input[2].type``).

Lossy on purpose, because chat has no slot for them: ``reasoning`` items in the input are skipped
(model-internal, meaningful only to the model that made them); ``developer`` messages become
``system`` ones (every chat-speaking provider, Anthropic's translation included, takes that);
top-level fields chat takes with the same meaning (``service_tier``, ``prompt_cache_key``,
``safety_identifier``) go into the chat body; the others (``include``, ``reasoning``, unknown ones) ride
under ``RESPONSES_EXTRA``, which a native-Responses upstream gets back unchanged and any other drops.
``previous_response_id`` and ``truncation`` belong to the stored side
(``gateway.responses_api``) and are only validated and echoed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import BadRequest, UpstreamUnavailable
from gateway.hosted import items as mcp_items
from gateway.hosted.spec import HostedTool, echo_tool, parse_tool
from gateway.ingress.extra import plugin_extra
from gateway.providers.base import RESPONSES_EXTRA

_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_TOOL_CHOICES = frozenset({"auto", "none", "required"})
_SKIPPED_ITEMS = frozenset({"reasoning", "mcp_list_tools", "mcp_approval_request", "mcp_approval_response"})
"""Reasoning means something only to the model that made it; the MCP items other than ``mcp_call``
are the hosted loop's (``gateway/hosted``): a listing or an approval is not something the model said."""
MAX_METADATA_PAIRS = 16
# The Responses fields this module reads; any other top-level field is passed on (see module doc).
_READ = frozenset(
    {
        "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream", "user",
        "store", "parallel_tool_calls", "previous_response_id", "truncation", "metadata", "text",
        "tools", "tool_choice",
    }
)  # fmt: skip
# Unread fields a chat server takes under the same name and meaning.
_CHAT_TOO = frozenset({"service_tier", "prompt_cache_key", "safety_identifier"})


def _bad(path: str, problem: str) -> BadRequest:
    return BadRequest(f"{path}: {problem}", param=path)


@dataclass(frozen=True, slots=True)
class Echo:
    """The request fields a Response object repeats back, as the client sent them (defaults filled)."""

    model: str
    instructions: str | None
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    text: dict[str, Any]
    temperature: float | None
    top_p: float | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    previous_response_id: str | None
    store: bool
    truncation: str
    parallel_tool_calls: bool
    user: str | None
    hosted: tuple[HostedTool, ...] = ()
    """The ``mcp`` tools (``gateway/hosted``): non-empty, the gateway runs the tool loop itself."""

    def fields(self) -> dict[str, Any]:
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata,
            "model": self.model,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "store": self.store,
            "temperature": self.temperature,
            "text": self.text,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": self.top_p,
            "truncation": self.truncation,
            "user": self.user,
        }


# --------------------------------------------------------------------------------------------
# Request: Responses -> chat


def to_chat_request(body: dict[str, Any]) -> tuple[dict[str, Any], Echo, list[dict[str, Any]]]:
    """The chat body, what the answer echoes, and the input as items (a string input as one message).

    Raises ``BadRequest`` naming the field for anything missing, mistyped or unsupported.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "required, must be a non-empty string")
    items = _input_items(body.get("input"))
    instructions = _optional(body, "instructions", str)
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for i, item in enumerate(items):
        _add_item(messages, item, f"input[{i}]", body)
    out: dict[str, Any] = {"model": model, "messages": messages}

    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
            raise _bad("max_output_tokens", "must be a positive integer")
        # max_tokens rather than max_completion_tokens: every chat server and the Anthropic
        # translation take it, and admission reserves either.
        out["max_tokens"] = max_output
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _bad(name, "must be a number")
            out[name] = value
    stream = _optional(body, "stream", bool)
    if stream:
        # Without include_usage a chat stream carries no token counts, and response.completed needs them.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    user = _optional(body, "user", str)
    if user:
        out["user"] = user
    store = _optional(body, "store", bool)
    parallel = _optional(body, "parallel_tool_calls", bool)
    previous = _optional(body, "previous_response_id", str)
    truncation = _optional(body, "truncation", str) or "disabled"
    if truncation not in ("auto", "disabled"):
        raise _bad("truncation", "must be 'auto' or 'disabled'")
    metadata = _metadata(body.get("metadata"))
    text = _text_format(body.get("text"), out)
    tools, hosted = _tools(body.get("tools"))
    choice = _tool_choice(body.get("tool_choice"))
    functions = [tool for tool in tools if tool["type"] == "function"] if hosted else tools
    if functions:  # chat servers reject tool_choice / parallel_tool_calls without tools
        out["tools"] = [_chat_tool(tool) for tool in functions]
        if choice != "auto":
            out["tool_choice"] = _chat_tool_choice(choice)
        if parallel is False:
            out["parallel_tool_calls"] = False
    unread = body.keys() - _READ
    if unread:
        extra = {k: body[k] for k in unread - _CHAT_TOO}
        out.update((k, body[k]) for k in unread & _CHAT_TOO)
        if extra:
            out[RESPONSES_EXTRA] = extra
    echo = Echo(
        model=model,
        instructions=instructions,
        tools=tools,
        tool_choice=choice,
        text=text,
        temperature=out.get("temperature"),
        top_p=out.get("top_p"),
        max_output_tokens=max_output,
        metadata=metadata,
        previous_response_id=previous,
        store=store is not False,
        truncation=truncation,
        parallel_tool_calls=parallel is not False,
        user=user,
        hosted=hosted,
    )
    return out, echo, items


def _optional(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise _bad(name, f"must be a {'boolean' if kind is bool else 'string'}")
    return value


def _input_items(raw: object) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    if not isinstance(raw, list) or not raw:
        raise _bad("input", "required, must be a string or a non-empty list of items")
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad(f"input[{i}]", "must be an object")
    return raw


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any], path: str, body: dict[str, Any]) -> None:
    kind = item.get("type", "message")  # an easy message ({role, content}) has no type
    if kind == "message":
        messages.append(_message(item, path))
    elif kind == "function_call":
        call = {
            "id": _string(item, "call_id", path),
            "type": "function",
            "function": {"name": _string(item, "name", path), "arguments": _string(item, "arguments", path)},
        }
        last = messages[-1] if messages else None
        # Parallel calls, and the text said before them, are one chat assistant message.
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            output = "\n".join(_part_text(p, f"{path}.output[{j}]") for j, p in enumerate(output))
        if not isinstance(output, str):
            raise _bad(f"{path}.output", "required, must be a string or a list of text parts")
        messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", path), "content": output})
    elif kind == "mcp_call":  # a hosted MCP call of an earlier turn
        _string(item, "server_label", path)
        _string(item, "name", path)
        if _hosts_mcp(body.get("tools")):  # the model's call and its result, as the tools are offered again
            messages.extend(mcp_items.as_chat(item))
        else:  # no tools this turn (a provider may refuse tool calls then): what happened, as text
            messages.append({"role": "assistant", "content": mcp_items.as_text(item)})
    elif kind not in _SKIPPED_ITEMS:
        raise _bad(f"{path}.type", f"unsupported input item type {kind!r}")


def _hosts_mcp(tools: object) -> bool:
    return isinstance(tools, list) and any(isinstance(t, dict) and t.get("type") == "mcp" for t in tools)


def _string(item: dict[str, Any], name: str, path: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or (not value and name != "arguments"):
        raise _bad(f"{path}.{name}", "required, must be a string")
    return value


def _message(item: dict[str, Any], path: str) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise _bad(f"{path}.role", "must be one of 'user', 'system', 'developer', 'assistant'")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": _ROLES[role], "content": content}
    if not isinstance(content, list):
        raise _bad(f"{path}.content", "must be a string or a list of content parts")
    if role == "assistant":
        text = "".join(_part_text(p, f"{path}.content[{j}]") for j, p in enumerate(content))
        return {"role": "assistant", "content": text}
    parts = [_input_part(p, f"{path}.content[{j}]") for j, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        # plain text: every chat server takes a string, not all take a list here (system)
        return {"role": _ROLES[role], "content": "\n".join(p["text"] for p in parts)}
    if role != "user":
        raise _bad(f"{path}.content", f"images are allowed in user messages only, not {role!r}")
    return {"role": "user", "content": parts}


def _part_type(part: object, path: str) -> str:
    if not isinstance(part, dict):
        raise _bad(path, "must be a content part object")
    kind = part.get("type")
    if not isinstance(kind, str):
        raise _bad(f"{path}.type", "required, must be a string")
    return kind


def _part_text(part: object, path: str) -> str:
    kind = _part_type(part, path)
    if kind not in ("output_text", "input_text", "refusal", "text"):
        raise _bad(f"{path}.type", f"unsupported content part type {kind!r} here")
    assert isinstance(part, dict)
    text = part.get("refusal" if kind == "refusal" else "text")
    if not isinstance(text, str):
        raise _bad(f"{path}.text", "required, must be a string")
    return text


def _input_part(part: object, path: str) -> dict[str, Any]:
    kind = _part_type(part, path)
    assert isinstance(part, dict)
    if kind in ("input_text", "text"):
        return {"type": "text", "text": _part_text(part, path)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            # file_id needs OpenAI's Files API, which the gateway does not proxy
            raise _bad(f"{path}.image_url", "required, must be a URL or a data: URL")
        image: dict[str, Any] = {"url": url}
        detail = part.get("detail")
        if detail is not None:
            if detail not in ("auto", "low", "high"):
                raise _bad(f"{path}.detail", "must be 'auto', 'low' or 'high'")
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    raise _bad(f"{path}.type", f"unsupported content part type {kind!r}")


def _metadata(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_METADATA_PAIRS:
        raise _bad("metadata", f"must be an object of at most {MAX_METADATA_PAIRS} string values")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise _bad(f"metadata.{key}", "must be a string")
    return raw


def _text_format(raw: object, out: dict[str, Any]) -> dict[str, Any]:
    if raw is None:
        return {"format": {"type": "text"}}
    if not isinstance(raw, dict):
        raise _bad("text", "must be an object")
    fmt = raw.get("format")
    if fmt is None:
        return {**raw, "format": {"type": "text"}}
    if not isinstance(fmt, dict):
        raise _bad("text.format", "must be an object")
    kind = fmt.get("type")
    if kind == "json_schema":
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not name:
            raise _bad("text.format.name", "required, must be a string")
        if not isinstance(schema, dict):
            raise _bad("text.format.schema", "required, must be a JSON Schema object")
        spec: dict[str, Any] = {"name": name, "schema": schema}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind != "text":
        raise _bad("text.format.type", "must be 'text', 'json_object' or 'json_schema'")
    return raw


def _tools(raw: object) -> tuple[list[dict[str, Any]], tuple[HostedTool, ...]]:
    """The tools as echoed (function and ``mcp`` ones, in order), and the ``mcp`` ones parsed."""
    if raw is None:
        return [], ()
    if not isinstance(raw, list):
        raise _bad("tools", "must be a list")
    tools = []
    hosted: list[HostedTool] = []
    for i, tool in enumerate(raw):
        path = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(path, "must be an object")
        if tool.get("type") == "mcp":
            parsed = parse_tool(tool, path)
            if any(h.label == parsed.label for h in hosted):
                raise _bad(f"{path}.server_label", f"server {parsed.label!r} is given twice")
            hosted.append(parsed)
            tools.append(echo_tool(parsed, tool))
            continue
        if tool.get("type") != "function":
            raise _bad(
                f"{path}.type", f"tool type {tool.get('type')!r} is not supported; use 'function' or 'mcp'"
            )
        name, params = tool.get("name"), tool.get("parameters")
        if not isinstance(name, str) or not name:
            raise _bad(f"{path}.name", "required, must be a string")
        if params is not None and not isinstance(params, dict):
            raise _bad(f"{path}.parameters", "must be a JSON Schema object")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise _bad(f"{path}.description", "must be a string")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _bad(f"{path}.strict", "must be a boolean")
        tools.append(
            {
                "type": "function",
                "name": name,
                "description": description,
                "parameters": params,
                "strict": strict if strict is not None else True,
            }
        )
    return tools, tuple(hosted)


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"]}
    if tool["description"] is not None:
        function["description"] = tool["description"]
    function["parameters"] = tool["parameters"] or {"type": "object", "properties": {}}
    if tool["strict"]:
        function["strict"] = True
    return {"type": "function", "function": function}


def _tool_choice(raw: object) -> str | dict[str, Any]:
    if raw is None:
        return "auto"
    if isinstance(raw, str):
        if raw not in _TOOL_CHOICES:
            raise _bad("tool_choice", "must be 'auto', 'none', 'required' or a function choice")
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function":
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("tool_choice.name", "required when type is 'function'")
        return {"type": "function", "name": name}
    raise _bad("tool_choice", "must be 'auto', 'none', 'required' or {type: 'function', name}")


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    return {"type": "function", "function": {"name": choice["name"]}}


# --------------------------------------------------------------------------------------------
# Response: chat -> Responses


def status_of(finish_reason: object) -> tuple[str, dict[str, str] | None]:
    """The Response ``status`` and ``incomplete_details`` for a chat ``finish_reason``."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def usage_of(usage: object) -> dict[str, Any] | None:
    """Chat usage as Responses usage (cached and reasoning tokens included, 0 when unreported)."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    prompt = prompt if type(prompt) is int else 0
    completion = completion if type(completion) is int else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _detail(usage, "prompt_tokens_details", "cached_tokens"),
            "cache_write_tokens": _detail(usage, "prompt_tokens_details", "cache_write_tokens"),
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _detail(usage, "completion_tokens_details", "reasoning_tokens")
        },
        "total_tokens": prompt + completion,
    }


def _detail(usage: dict[str, Any], group: str, name: str) -> int:
    details = usage.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    return value if type(value) is int else 0


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def envelope(
    response_id: str,
    created_at: int,
    echo: Echo,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete: dict[str, str] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "output": output,
        "usage": usage,
        **echo.fields(),
    }


def to_response(answer: dict[str, Any], *, response_id: str, created_at: int, echo: Echo) -> dict[str, Any]:
    """A ``chat.completion`` (choice 0) as a Response object.

    Raises ``UpstreamUnavailable`` when the answer has no choice to translate.
    """
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamUnavailable("upstream answer has no choices")
    choice = choices[0]
    status, incomplete = status_of(choice.get("finish_reason"))
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    suffix = response_id.removeprefix("resp_")
    output: list[dict[str, Any]] = []
    text = message.get("content")
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        item = message_item(f"msg_{suffix}", "", status)
        item["content"] = [{"type": "refusal", "refusal": refusal}]
        output.append(item)
    elif isinstance(text, str) and text:
        output.append(message_item(f"msg_{suffix}", text, status))
    calls = message.get("tool_calls")
    for i, call in enumerate(calls if isinstance(calls, list) else []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        call_id = call.get("id")
        arguments = function.get("arguments")
        output.append(
            call_item(
                f"fc_{suffix}_{i}",
                call_id if isinstance(call_id, str) and call_id else f"call_{suffix}_{i}",
                str(function.get("name") or ""),
                arguments if isinstance(arguments, str) else "{}",
                "completed",
            )
        )
    out = envelope(
        response_id,
        created_at,
        echo,
        status=status,
        output=output,
        usage=usage_of(answer.get("usage")),
        incomplete=incomplete,
    )
    extra = plugin_extra(answer.get("x_gateway"))
    if extra:  # what a post hook put in the answer (RAG's citations) rides on the Response
        out["x_gateway"] = extra
    return out
