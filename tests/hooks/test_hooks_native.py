"""Hooks on a ``/v1/messages`` request served natively by an ``anthropic`` deployment: the hook sees the
OpenAI form, and its change is laid over the body the client sent, keeping what it could not see
(documents, ``cache_control``, ``thinking``); a stream through post hooks takes the translated path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic_upstream import THINKING_MESSAGE, THINKING_STREAM, Answer, RecordingAnthropic
from conftest import BUDGETS, KEY_ACME, GatewayFactory, free_port
from plugin_sidecar import Sidecar

from gateway.ingress.anthropic import to_openai_request
from gateway.ingress.anthropic_remap import remap
from gateway.ingress.anthropic_view import translatable

PDF = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}
BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 2048,
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "system": [
        {"type": "text", "text": "You are a geographer."},
        {"type": "text", "text": "Shared context.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "document", "source": PDF, "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "My card is 4111 1111 1111 1111. Capital?"},
            ],
        }
    ],
}


def view_of(body: dict[str, Any]) -> dict[str, Any]:
    return to_openai_request(translatable(body)[0])


def hooked_version(view: dict[str, Any]) -> dict[str, Any]:
    """What a guard-and-RAG plugin does: mask the card, put retrieved context before the system prompt."""
    messages = [dict(m) for m in view["messages"]]
    messages[0]["content"] = "Retrieved: Paris is in France.\n\n" + messages[0]["content"]
    assert messages[-1]["content"] == "My card is 4111 1111 1111 1111. Capital?"  # the PDF has no text
    messages[-1]["content"] = "My card is [CARD]. Capital?"
    return {**view, "messages": messages}


def test_remap_keeps_documents_cache_control_and_thinking() -> None:
    view = view_of(BODY)
    out = remap(BODY, view, hooked_version(view))
    assert out["thinking"] == BODY["thinking"]
    assert out["system"] == [{"type": "text", "text": "Retrieved: Paris is in France."}, *BODY["system"]]
    content = out["messages"][0]["content"]
    assert content[0] == BODY["messages"][0]["content"][0]  # the PDF, with its cache_control
    assert content[1] == {"type": "text", "text": "My card is [CARD]. Capital?"}


def test_remap_rewritten_system_keeps_the_cache_breakpoint() -> None:
    view = view_of(BODY)
    out = remap(
        BODY, view, {**view, "messages": [{"role": "system", "content": "New."}, *view["messages"][1:]]}
    )
    assert out["system"] == [{"type": "text", "text": "New.", "cache_control": {"type": "ephemeral"}}]


@pytest.fixture(scope="module")
def sidecar() -> Iterator[Sidecar]:
    side = Sidecar(free_port()).start()
    yield side
    side.stop()


@pytest.fixture
def upstream() -> Iterator[RecordingAnthropic]:
    server = RecordingAnthropic().start()
    server.script(Answer(body=THINKING_MESSAGE))
    yield server
    server.stop()


@pytest.fixture
def gw(gateway_factory: GatewayFactory, sidecar: Sidecar, upstream: RecordingAnthropic) -> Any:
    sidecar.reset()
    routes = f"""
providers:
  anth: {{type: anthropic, base_url: "{upstream.url}", api_key: k}}
models:
  claude-sonnet-4-5: {{provider: anth, price: {{input_per_mtok: 3, output_per_mtok: 15}}}}
plugins:
  pre: {{url: "{sidecar.plugin_url("pre")}", hooks: [pre], on_error: closed, token: t1}}
  both: {{url: "{sidecar.plugin_url("both")}", hooks: [pre, post], on_error: closed, token: t2}}
routes:
  - {{name: pre, match: {{task: pre}}, targets: [{{model: claude-sonnet-4-5}}], plugins: [pre]}}
  - {{name: both, match: {{task: both}}, targets: [{{model: claude-sonnet-4-5}}], plugins: [both]}}
"""
    return gateway_factory(routes, BUDGETS)


def client(gw: Any, task: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.url, api_key=KEY_ACME, max_retries=0, default_headers={"x-gateway-task": task}
    )


def test_a_pre_hook_change_reaches_the_native_upstream(
    gw: Any, sidecar: Sidecar, upstream: RecordingAnthropic
) -> None:
    view = view_of(BODY)
    sidecar.set("pre", "pre", answer={"action": "modify", "request": hooked_version(view)})
    message = client(gw, "pre").messages.create(**BODY)
    assert message.content[0].type == "thinking"  # the native answer
    seen = sidecar.calls()[0]["body"]["request"]
    assert seen["messages"] == view["messages"]  # the hook saw the OpenAI form
    sent = upstream.last.json()
    assert sent == remap(BODY, view, hooked_version(view))
    assert sent["messages"][0]["content"][0]["source"] == PDF and sent["thinking"] == BODY["thinking"]


def test_post_hooks_see_a_native_answer_in_openai_form(
    gw: Any, sidecar: Sidecar, upstream: RecordingAnthropic
) -> None:
    raw = client(gw, "both").messages.with_raw_response.create(**BODY)
    assert raw.http_response.content == json.dumps(THINKING_MESSAGE).encode()  # not modified: as sent
    post = next(c for c in sidecar.calls() if c["hook"] == "post")["body"]
    assert post["response"]["choices"][0]["message"]["content"] == "Paris"


def test_a_stream_through_post_hooks_is_translated(
    gw: Any, sidecar: Sidecar, upstream: RecordingAnthropic
) -> None:
    """Post hooks read a stream's OpenAI chunks, so such a route streams through the translation:
    the thinking block is not part of the OpenAI form, and the upstream got the translated body."""
    upstream.script(Answer(events=THINKING_STREAM))
    plain = {k: v for k, v in BODY.items() if k != "messages"}
    plain["messages"] = [{"role": "user", "content": "Capital?"}]
    with client(gw, "both").messages.stream(**plain) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == "Paris"  # type: ignore[union-attr]
    assert "thinking" not in upstream.last.json()


GROUNDED: dict[str, Any] = {
    "id": "chatcmpl-rag",
    "object": "chat.completion",
    "created": 1,
    "model": "claude-sonnet-4-5",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Paris [geo#0]."}, "finish_reason": "stop"}
    ],
    "x_gateway": {"citations": [{"doc_id": "geo", "chunk_id": "geo#0", "title": "Geo", "score": 0.8}]},
}


def test_a_post_hook_that_modifies_a_native_answer_gets_the_translated_form_with_its_citations(
    gw: Any, sidecar: Sidecar, upstream: RecordingAnthropic
) -> None:
    sidecar.set("both", "post", answer={"action": "modify", "response": GROUNDED})
    message = client(gw, "both").messages.create(**BODY)
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Paris [geo#0]."  # type: ignore[union-attr]
    assert (message.model_extra or {})["x_gateway"] == GROUNDED["x_gateway"]


def test_a_post_hook_that_only_annotates_a_native_answer_keeps_it_native_plus_x_gateway(
    gw: Any, sidecar: Sidecar, upstream: RecordingAnthropic
) -> None:
    sidecar.set("both", "post", answer={"action": "continue", "annotations": {"checked": 1}})
    message = client(gw, "both").messages.create(**BODY)
    assert message.content[0].type == "thinking"  # the upstream's own answer
    assert (message.model_extra or {})["x_gateway"] == {"plugins": {"both": {"checked": 1}}}


def test_a_native_stream_through_a_modifying_post_hook_carries_its_citations(
    gw: Any, sidecar: Sidecar, upstream: RecordingAnthropic
) -> None:
    upstream.script(Answer(events=THINKING_STREAM))
    sidecar.set("both", "post", answer={"action": "modify", "response": GROUNDED})
    plain = {k: v for k, v in BODY.items() if k != "messages"}
    plain["messages"] = [{"role": "user", "content": "Capital?"}]
    events = list(client(gw, "both").messages.create(**plain, stream=True))
    delta = next(e for e in events if e.type == "message_delta")
    assert (delta.model_extra or {})["x_gateway"] == GROUNDED["x_gateway"]
