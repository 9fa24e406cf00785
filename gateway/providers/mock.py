"""The built-in mock provider: deterministic answers and embeddings with no network.

It makes the shipped config answer with no API keys, and injects faults for drills:
``{type: mock, latency_ms: 0, fault: none|429|500|503|timeout|disconnect, fault_rate: 1.0}``.

Usage is counted with tiktoken (o200k_base), as an OpenAI upstream would count it.

Answers: chat echoes the last user message (``"Mock reply: <text>"``); when the request offers
tools and the last message is the user's (and ``tool_choice`` is not ``none``) it calls the named or
first tool with arguments valid under its ``parameters`` schema; with ``response_format`` json_schema it
answers JSON valid under that schema (``gateway/providers/mock_schema.py``), with json_object a JSON
object. An answer longer than ``max_tokens`` / ``max_completion_tokens`` is cut to it, with
``finish_reason: length``, as a real model's would be. Embeddings are unit vectors of hashed
features (``gateway/providers/mock_embed.py``): texts that share words are near, unrelated texts far,
so retrieval demos and tests mean something (``dimensions`` long, default 16; at most
``MAX_DIMENSIONS`` and ``MAX_VALUES`` values per request, else a 400 like a real provider's).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import struct
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from gateway.config.model import ProviderConfig
from gateway.errors import DeadlineExceeded, UpstreamStatusError, UpstreamUnavailable
from gateway.providers.base import Operation, UpstreamRequest, UpstreamResponse, Usage
from gateway.providers.mock_embed import embed
from gateway.providers.mock_schema import sample
from gateway.sse import data_frame
from gateway.tokens import count_chat, count_text


class MockProvider:
    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = config.name
        self._latency_s = float(_number(config.options.get("latency_ms"), 0.0)) / 1000.0
        self._fault = str(config.options.get("fault") or "none")
        self._fault_rate = float(_number(config.options.get("fault_rate"), 1.0))
        self._rng = random.Random()

    def prepare(self, request: UpstreamRequest) -> None:
        """Nothing to do ahead: the mock answers from the request itself."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        await self._before(request)
        if self._faulty() and self._fault == "disconnect":
            raise UpstreamUnavailable(f"upstream '{self.name}' disconnected")
        if request.operation is Operation.EMBEDDINGS:
            body, usage = embeddings(request.body)
        elif request.operation is Operation.COMPLETIONS:
            body, usage = completion(request.body)
        else:
            body, usage = chat(request.body)
        return UpstreamResponse(orjson.dumps(body), usage)

    async def open_stream(self, request: UpstreamRequest) -> MockStream:
        await self._before(request)
        if request.operation is Operation.EMBEDDINGS:
            raise UpstreamStatusError(400, "embeddings cannot be streamed", param="stream")
        disconnect = self._faulty() and self._fault == "disconnect"
        return MockStream(request, disconnect_after=1 if disconnect else None, name=self.name)

    async def _before(self, request: UpstreamRequest) -> None:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if self._fault in ("none", "disconnect") or not self._faulty():
            return
        if self._fault == "timeout":
            await asyncio.sleep(request.timeout_s)
            raise DeadlineExceeded(f"upstream '{self.name}' timed out")
        status = int(self._fault)
        retry_after = "1" if status == 429 else None
        raise UpstreamStatusError(status, f"mock fault {status}", retry_after=retry_after)

    def _faulty(self) -> bool:
        return self._fault != "none" and self._rng.random() < self._fault_rate


class MockStream:
    def __init__(self, request: UpstreamRequest, *, disconnect_after: int | None, name: str) -> None:
        self._request = request
        self._disconnect_after = disconnect_after
        self._name = name
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body = self._request.body
        if self._request.operation is Operation.COMPLETIONS:
            answer, usage = completion(body)
        else:
            answer, usage = chat(body)
        base = {k: answer[k] for k in ("id", "created", "model")}
        obj = (
            "text_completion" if self._request.operation is Operation.COMPLETIONS else "chat.completion.chunk"
        )
        for n, delta in enumerate(_deltas(answer, self._request.operation)):
            if self._disconnect_after is not None and n >= self._disconnect_after:
                raise UpstreamUnavailable(f"upstream '{self._name}' disconnected mid-stream")
            yield data_frame(orjson.dumps({**base, "object": obj, "choices": [delta], "usage": None}))
            await asyncio.sleep(0)
        self.usage = usage
        self.usage_frame = data_frame(
            orjson.dumps({**base, "object": obj, "choices": [], "usage": usage.to_openai()})
        )

    async def aclose(self) -> None:
        return None


def _deltas(answer: Mapping[str, Any], operation: Operation) -> list[dict[str, Any]]:
    choice = answer["choices"][0]
    if operation is Operation.COMPLETIONS:
        words = _split(choice["text"])
        out: list[dict[str, Any]] = [
            {"index": 0, "text": w, "logprobs": None, "finish_reason": None} for w in words
        ]
        out.append({"index": 0, "text": "", "logprobs": None, "finish_reason": choice["finish_reason"]})
        return out
    message = choice["message"]
    deltas: list[dict[str, Any]] = [{"index": 0, "delta": {"role": "assistant", "content": ""}}]
    for word in _split(message.get("content") or ""):
        deltas.append({"index": 0, "delta": {"content": word}})
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        first = {
            "index": i,
            "id": call["id"],
            "type": "function",
            "function": {"name": fn["name"], "arguments": ""},
        }
        deltas.append({"index": 0, "delta": {"tool_calls": [first]}})
        deltas.append(
            {"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]}}
        )
    deltas.append({"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]})
    for d in deltas:
        d.setdefault("finish_reason", None)
        d["logprobs"] = None
    return deltas


def _split(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)] if text else []


def _id(prefix: str, body: Mapping[str, Any]) -> str:
    return prefix + hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _count(text: str) -> int:
    return count_text(text, "gpt-4o") if text else 0


def chat(body: Mapping[str, Any]) -> tuple[dict[str, Any], Usage]:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last = messages[-1] if messages else {}
    prompt_tokens = count_chat(messages, "gpt-4o", body.get("tools"))
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    tools = body.get("tools") or []
    choice = body.get("tool_choice", "auto")
    finish = "stop"
    if tools and choice != "none" and last.get("role") == "user":
        name, parameters = _tool(tools, choice)
        call_id = _id("call_", {"m": messages, "t": name})
        arguments = orjson.dumps(sample(parameters) if parameters else {}).decode()
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        ]
        finish = "tool_calls"
        text = ""
    else:
        text = "Mock reply: " + _text_of(last.get("content"))
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            text = orjson.dumps(sample(schema) if isinstance(schema, dict) else {}).decode()
        elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
            text = orjson.dumps({"reply": text}).decode()
        text, cut = _cut(text, body.get("max_completion_tokens") or body.get("max_tokens"))
        if cut:
            finish = "length"
        message["content"] = text
    usage = Usage(
        prompt_tokens=prompt_tokens, completion_tokens=_count(text) + (5 if finish == "tool_calls" else 0)
    )
    answer = {
        "id": _id("chatcmpl-mock-", body),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": usage.to_openai(),
    }
    return answer, usage


def _tool(tools: list[Any], choice: Any) -> tuple[str, dict[str, Any] | None]:
    """The tool to call (the named one, else the first) and its parameters schema."""
    wanted = None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = str(choice["function"].get("name", "tool"))
    functions = [t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    for fn in functions:
        if wanted is None or fn.get("name") == wanted:
            params = fn.get("parameters")
            return str(fn.get("name", "tool")), params if isinstance(params, dict) else None
    return wanted or "tool", None


def _cut(text: str, limit: object) -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` tokens (whole words), and whether it was cut."""
    if type(limit) is not int or limit < 1 or _count(text) <= limit:
        return text, False
    words = _split(text)
    low, high = 0, len(words)  # the longest prefix of words within the limit, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        if _count("".join(words[:mid])) <= limit:
            low = mid
        else:
            high = mid - 1
    return "".join(words[:low]), True


def completion(body: Mapping[str, Any]) -> tuple[dict[str, Any], Usage]:
    prompt = body.get("prompt")
    text_in = prompt if isinstance(prompt, str) else " ".join(str(p) for p in prompt or [])
    text = "Mock completion: " + text_in
    usage = Usage(prompt_tokens=_count(text_in), completion_tokens=_count(text))
    answer = {
        "id": _id("cmpl-mock-", body),
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
        "usage": usage.to_openai(),
    }
    return answer, usage


MAX_DIMENSIONS = 8192
MAX_VALUES = 1 << 18
"""The most vector values (inputs × dimensions) one mock embeddings request computes: the mock runs
on the event loop, so it refuses, as a real provider would, work that would stall the worker."""


def embeddings(body: Mapping[str, Any]) -> tuple[dict[str, Any], Usage]:
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else list(raw or [])
    dims = _dimensions(body.get("dimensions"), len(inputs))
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(inputs):
        vector = embed(item, dims)
        packed = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": i, "embedding": packed})
    tokens = sum(count_text(x, "gpt-4o") if isinstance(x, str | list) else 1 for x in inputs)
    usage = Usage(prompt_tokens=tokens)
    answer = {
        "object": "list",
        "data": data,
        "model": body.get("model", ""),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return answer, usage


def _dimensions(value: Any, inputs: int) -> int:
    """The requested vector size (default 16), or the 400 a provider answers to one it cannot make."""
    if value is None:
        dims = 16
    elif isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_DIMENSIONS:
        dims = value
    else:
        raise UpstreamStatusError(
            400,
            f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS} for this model.",
            param="dimensions",
            code="invalid_value",
        )
    if dims * inputs > MAX_VALUES:
        raise UpstreamStatusError(
            400,
            f"inputs × dimensions must be at most {MAX_VALUES}; send fewer inputs per request.",
            param="input",
            code="invalid_value",
        )
    return dims


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
