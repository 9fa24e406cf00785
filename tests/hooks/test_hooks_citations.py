"""A post hook's ``x_gateway`` (RAG's citations; the ``plugins`` annotations) reaches the client on
``/v1/messages`` and ``/v1/responses`` too, streamed and not, through the real anthropic and openai SDKs
(loopback sidecar process); a route without plugins answers without any ``x_gateway``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from conftest import BUDGETS, KEY_ACME, GatewayFactory, free_port
from hookenv import ADMIN_KEY, SECRET, Hooked, routes_yaml
from plugin_sidecar import Sidecar
from upstreams import FakeOpenAI

from gateway.delegation import SECRET_ENV

CITATIONS = [{"doc_id": "faq", "chunk_id": "faq#0", "title": "FAQ", "score": 0.91}]
GROUNDED: dict[str, Any] = {
    "id": "chatcmpl-rag",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Refunds take 5 days [faq#0]."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    "x_gateway": {"citations": CITATIONS},
}
MODIFY = {"action": "modify", "response": GROUNDED, "annotations": {"grounded": True}}
ANNOTATE = {"action": "continue", "annotations": {"seen": "yes"}}


@pytest.fixture(scope="module")
def sidecar() -> Iterator[Sidecar]:
    side = Sidecar(free_port()).start()
    yield side
    side.stop()


@pytest.fixture
def hooked(gateway_factory: GatewayFactory, sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch) -> Hooked:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    sidecar.reset()
    upstream = FakeOpenAI()
    gateway = gateway_factory(
        routes_yaml(sidecar, free_port()), BUDGETS, transport=upstream.transport, admin_key=ADMIN_KEY
    )
    return Hooked(gateway, sidecar, upstream)


def claude(h: Hooked, task: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=h.gateway.url, api_key=KEY_ACME, max_retries=0, default_headers={"x-gateway-task": task}
    )


ASK_MESSAGES: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "How long do refunds take?"}],
}
ASK_RESPONSES: dict[str, Any] = {"model": "gpt-4o-mini", "input": "How long do refunds take?", "store": False}


# -- /v1/messages ---------------------------------------------------------------------------------------


def test_messages_carry_the_citations_of_a_modifying_post_hook(hooked: Hooked) -> None:
    hooked.side.set("a", "post", answer=MODIFY)
    message = claude(hooked, "one").messages.create(**ASK_MESSAGES)
    assert message.content[0].type == "text" and message.content[0].text == "Refunds take 5 days [faq#0]."
    extra = (message.model_extra or {})["x_gateway"]
    assert extra["citations"] == CITATIONS
    assert extra["plugins"]["a"]["grounded"] is True
    assert "cost_usd" not in extra  # the cost stays in the x-gateway-cost-usd header


def test_messages_stream_carries_the_citations_on_message_delta(hooked: Hooked) -> None:
    hooked.side.set("a", "post", answer=MODIFY)
    events = list(claude(hooked, "one").messages.create(**ASK_MESSAGES, stream=True))
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    deltas = [e for e in events if e.type == "message_delta"]
    assert len(deltas) == 1 and deltas[0].delta.stop_reason == "end_turn"
    assert (deltas[0].model_extra or {})["x_gateway"] == {"citations": CITATIONS}
    assert deltas[0].usage.output_tokens > 0  # the usage the upstream reported (what was billed)
    text = "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == "Refunds take 5 days [faq#0]."
    assert all("x_gateway" not in (e.model_extra or {}) for e in events if e.type != "message_delta")


def test_messages_stream_helper_still_parses_an_answer_with_citations(hooked: Hooked) -> None:
    hooked.side.set("a", "post", answer=MODIFY)
    with claude(hooked, "one").messages.stream(**ASK_MESSAGES) as stream:
        assert stream.get_final_text() == "Refunds take 5 days [faq#0]."


def test_messages_carry_the_annotations_of_a_hook_that_only_annotates(hooked: Hooked) -> None:
    hooked.side.set("a", "post", answer=ANNOTATE)
    message = claude(hooked, "one").messages.create(**ASK_MESSAGES)
    assert message.content[0].type == "text" and message.content[0].text == "Hello there!"
    assert (message.model_extra or {})["x_gateway"] == {"plugins": {"a": {"seen": "yes"}}}


def test_messages_without_plugins_carry_no_x_gateway(hooked: Hooked) -> None:
    client = claude(hooked, "plain")
    assert "x_gateway" not in (client.messages.create(**ASK_MESSAGES).model_extra or {})
    events = list(client.messages.create(**ASK_MESSAGES, stream=True))
    assert events[-1].type == "message_stop"
    assert all("x_gateway" not in (e.model_extra or {}) for e in events)


# -- /v1/responses --------------------------------------------------------------------------------------


def test_responses_carry_the_citations_of_a_modifying_post_hook(hooked: Hooked) -> None:
    hooked.side.set("a", "post", answer=MODIFY)
    response = hooked.client("one").responses.create(**ASK_RESPONSES)
    assert response.output_text == "Refunds take 5 days [faq#0]."
    extra = (response.model_extra or {})["x_gateway"]
    assert extra["citations"] == CITATIONS and extra["plugins"]["a"]["grounded"] is True
    assert "cost_usd" not in extra


def test_responses_stream_carries_the_citations_on_response_completed(hooked: Hooked) -> None:
    hooked.side.set("a", "post", answer=MODIFY)
    events = list(hooked.client("one").responses.create(**ASK_RESPONSES, stream=True))
    completed = [e for e in events if e.type == "response.completed"]
    assert len(completed) == 1 and completed[0].response.output_text == "Refunds take 5 days [faq#0]."
    assert (completed[0].response.model_extra or {})["x_gateway"] == {"citations": CITATIONS}
    created = [e for e in events if e.type == "response.created"]
    assert "x_gateway" not in (created[0].response.model_extra or {})


def test_responses_carry_the_annotations_of_a_hook_that_only_annotates(hooked: Hooked) -> None:
    hooked.side.set("a", "post", answer=ANNOTATE)
    response = hooked.client("one").responses.create(**ASK_RESPONSES)
    assert response.output_text == "Hello there!"
    assert (response.model_extra or {})["x_gateway"] == {"plugins": {"a": {"seen": "yes"}}}


def test_responses_without_plugins_carry_no_x_gateway(hooked: Hooked) -> None:
    client = hooked.client("plain")
    assert "x_gateway" not in (client.responses.create(**ASK_RESPONSES).model_extra or {})
    events = list(client.responses.create(**ASK_RESPONSES, stream=True))
    completed = [e for e in events if e.type == "response.completed"]
    assert len(completed) == 1 and "x_gateway" not in (completed[0].response.model_extra or {})
