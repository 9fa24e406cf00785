"""Scripted loopback upstreams for the hosted-MCP loop tests (``httpx.MockTransport`` handlers).

Each model calls a tool while the conversation's last message is not a tool result, then answers
``Tool said: <result>``, so a test sees the tool's output reach the model. ``calls`` decides what is
called: the function name the gateway offered (``kit__count``) and its arguments. ``always_call`` makes a
runaway model that never stops calling; ``fail_after_tool`` answers 500 that many times to the step that
follows a tool result (an upstream retry, or a fallback, in mid-loop).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from upstreams import chat_body


class ScriptedOpenAI:
    def __init__(
        self,
        name: str = "kit__count",
        arguments: dict[str, Any] | None = None,
        *,
        always_call: bool = False,
        fail_after_tool: int = 0,
        completion_tokens: int = 3,
        delay_s: float = 0.0,
        delay_after_tool_s: float = 0.0,
    ) -> None:
        self.name = name
        self.arguments = arguments if arguments is not None else {"key": "openai"}
        self.always_call = always_call
        self.fail_after_tool = fail_after_tool
        self.bodies: list[dict[str, Any]] = []
        self.failures = 0
        self.completion_tokens = completion_tokens
        """What each answer reports it used (so a test can make a step's real cost what it wants)."""
        self.delay_s = delay_s
        """A slow model: each answer waits this long."""
        self.delay_after_tool_s = delay_after_tool_s
        """A model slow only to read a tool's result: the step after a call waits this long."""
        self.answered = 0
        """Answers sent: a step cut while it waits never counts here."""

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        last = body["messages"][-1]
        delay = self.delay_s + (self.delay_after_tool_s if last["role"] == "tool" else 0.0)
        if delay:
            await asyncio.sleep(delay)
        self.answered += 1
        if last["role"] == "tool" and self.fail_after_tool > 0:
            self.fail_after_tool -= 1
            self.failures += 1
            return httpx.Response(500, json={"error": {"message": "upstream broke", "type": "server_error"}})
        names = [t["function"]["name"] for t in body.get("tools") or ()]
        if names and (self.always_call or last["role"] != "tool"):
            call = {
                "id": f"call_{len(self.bodies)}",
                "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
            }
            answer = chat_body(body["model"])
            answer["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
            answer["choices"][0]["finish_reason"] = "tool_calls"
        else:
            answer = chat_body(body["model"], content=f"Tool said: {last['content']}")
        tokens = self.completion_tokens
        answer["usage"] = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
        return httpx.Response(200, json=answer)


class ScriptedAnthropic:
    """Messages API: ``tool_use`` first, then text quoting the ``tool_result`` it got."""

    def __init__(self, name: str = "kit__count", arguments: dict[str, Any] | None = None) -> None:
        self.name = name
        self.arguments = arguments if arguments is not None else {"key": "anthropic"}
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        last = body["messages"][-1]
        blocks = last["content"] if isinstance(last["content"], list) else []
        results = [b for b in blocks if b.get("type") == "tool_result"]
        content: list[dict[str, Any]]
        if results:
            result = results[-1]["content"]
            text = result if isinstance(result, str) else " ".join(p.get("text", "") for p in result)
            content, stop = [{"type": "text", "text": f"Tool said: {text}"}], "end_turn"
        else:
            use = {
                "type": "tool_use",
                "id": f"toolu_{len(self.bodies)}",
                "name": self.name,
                "input": self.arguments,
            }
            content, stop = [use], "tool_use"
        message = {
            "id": f"msg_{len(self.bodies)}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": 20, "output_tokens": 7},
        }
        return httpx.Response(200, json=message)
