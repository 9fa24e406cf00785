"""The OpenAI adapter's body: what it changes on the way upstream, and what it leaves alone."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.config.model import ProviderConfig
from gateway.providers.base import Operation, UpstreamRequest
from gateway.providers.openai import OpenAIProvider


def body_for(model: str, operation: Operation = Operation.CHAT, **fields: Any) -> dict[str, Any]:
    provider = OpenAIProvider(
        ProviderConfig(name="up", type="openai", base_url="http://127.0.0.1:9/v1"),
        httpx.MockTransport(lambda request: httpx.Response(500)),
    )
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    return provider.upstream_body(UpstreamRequest(operation, body, timeout_s=1.0))


REASONING = [
    "o1",
    "o3-mini",
    "o4-mini-2025-04-16",
    "gpt-5",
    "gpt-5.1",
    "gpt-5-mini",
    "openai/o3",
    "ft:o4-mini:a:x",
]
OTHERS = ["gpt-4o-mini", "gpt-4.1", "llama-3.1-8b", "omni-moderation-latest", "gpt-50"]


@pytest.mark.parametrize("model", REASONING)
def test_reasoning_models_get_max_completion_tokens(model: str) -> None:
    sent = body_for(model, max_tokens=512)
    assert "max_tokens" not in sent and sent["max_completion_tokens"] == 512


@pytest.mark.parametrize("model", OTHERS)
def test_other_models_keep_max_tokens(model: str) -> None:
    sent = body_for(model, max_tokens=512)
    assert sent["max_tokens"] == 512 and "max_completion_tokens" not in sent


def test_a_bound_the_client_set_under_the_new_name_wins() -> None:
    sent = body_for("o3", max_tokens=512, max_completion_tokens=100)
    assert "max_tokens" not in sent and sent["max_completion_tokens"] == 100


def test_legacy_completions_keep_max_tokens() -> None:
    assert body_for("o3", Operation.COMPLETIONS, max_tokens=16)["max_tokens"] == 16


def test_the_request_body_itself_is_not_changed() -> None:
    provider = OpenAIProvider(
        ProviderConfig(name="up", type="openai", base_url="http://127.0.0.1:9/v1"),
        httpx.MockTransport(lambda request: httpx.Response(500)),
    )
    body = {"model": "o3", "messages": [], "max_tokens": 8}
    provider.upstream_body(UpstreamRequest(Operation.CHAT, body, timeout_s=1.0))
    assert body == {"model": "o3", "messages": [], "max_tokens": 8}


async def test_a_prepared_request_sends_the_same_bytes() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(200, json={"choices": [], "usage": None})

    transport = httpx.MockTransport(handler)
    provider = OpenAIProvider(
        ProviderConfig(name="up", type="openai", base_url="http://127.0.0.1:9/v1"), transport
    )
    body = {"model": "o3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    await provider.send(UpstreamRequest(Operation.CHAT, dict(body), timeout_s=1.0))
    prepared = UpstreamRequest(Operation.CHAT, dict(body), timeout_s=1.0)
    provider.prepare(prepared)
    prepared.body["messages"] = []  # what went out was worked out in prepare()
    await provider.send(prepared)
    assert seen[0] == seen[1] == prepared.content
    assert b"max_completion_tokens" in seen[0]
