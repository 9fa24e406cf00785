"""The RAG hooks on their own: a Rag over a real store (Postgres over TCP) whose embeddings come from a
gateway stand-in on an httpx.MockTransport answering with the mock provider's vectors."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from rag_helpers import pg_tcp_fixture  # noqa: F401  (a fixture)

from gateway.providers.mock import embeddings
from plugins.rag.embed import Embedder, EmbeddingError
from plugins.rag.hooks import INSTRUCTION, Rag, options
from plugins.rag.store import ChunkIn, Store
from plugins.sdk import GatewayClient, HookCall, ProtocolError, Rejected

pytestmark = pytest.mark.slow  # a Postgres server

DIMS = 64
TEXTS = ["To reset your password open Settings.", "Invoices are issued monthly from Billing."]


def gateway_transport(seen: list[dict[str, Any]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        seen.append({"auth": request.headers["authorization"], **body})
        if body["input"][-1].startswith("status "):  # a test asks for the gateway's refusal
            status = int(body["input"][-1].split()[1])
            return httpx.Response(status, json={"error": {"message": f"refused with {status}"}})
        return httpx.Response(200, json=embeddings(body)[0])

    return httpx.MockTransport(handle)


@pytest.fixture
async def rag(pg_tcp: str) -> AsyncIterator[tuple[Rag, str, list[dict[str, Any]]]]:
    store = await Store.open(pg_tcp, DIMS, pool_size=2)
    seen: list[dict[str, Any]] = []
    gateway = GatewayClient("http://gateway.test", transport=gateway_transport(seen))
    embedder = Embedder(gateway, "emb", DIMS, batch=64)
    tenant = "t-" + uuid.uuid4().hex[:10]
    vectors = await embedder.embed(TEXTS, call("pre", tenant, "x").delegation)
    chunks = [ChunkIn(i, t) for i, t in enumerate(TEXTS)]
    await store.put_document(tenant, "kb", "faq", chunks=chunks, vectors=vectors, title="FAQ")
    seen.clear()
    yield Rag(store, embedder), tenant, seen
    await gateway.aclose()
    await store.close()


def call(
    hook: str, tenant: str, question: str, *, answer: str | None = None, request_id: str = "r1", **config: Any
) -> HookCall:
    body: dict[str, Any] = {
        "protocol": 1,
        "request_id": request_id,
        "tenant": tenant,
        "config": {"collection": "kb", "min_score": 0.25, **config},
        "request": {
            "model": "m",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        },
        "delegation": {"token": "gwd1.delegated", "expires_at": time.time() + 30},
        "deadline": time.time() + 30,
    }
    if answer is not None:
        body["response"] = {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
        }
    return HookCall.from_json(body, hook)


async def test_pre_injects_cited_chunks_before_the_last_user_turn(
    rag: tuple[Rag, str, list[dict[str, Any]]],
) -> None:
    hooks, tenant, seen = rag
    answer = await hooks.pre(call("pre", tenant, "How do I reset my password?"))
    assert answer.action == "modify" and answer.request is not None
    messages = answer.request["messages"]
    assert [m["role"] for m in messages] == ["system", "system", "user"]
    injected = messages[1]["content"]
    assert (
        injected.startswith(INSTRUCTION.format(example="[faq#0]")) and "[faq#0] (FAQ)\nTo reset" in injected
    )
    assert answer.annotations["retrieved"] >= 1 and answer.annotations["query"] == "last_turn"
    # one embeddings call, as the caller (the delegation token), at the configured size
    assert len(seen) == 1 and seen[0]["auth"] == "Bearer gwd1.delegated" and seen[0]["dimensions"] == DIMS


async def test_post_keeps_retrieved_citations_and_removes_the_rest(
    rag: tuple[Rag, str, list[dict[str, Any]]],
) -> None:
    hooks, tenant, _ = rag
    await hooks.pre(call("pre", tenant, "How do I reset my password?"))
    # faq#1 exists in the collection but was not retrieved for this request: it is not a valid citation
    said = "Open Settings [faq#0]. Billing [faq#1], see [made#3]."
    answer = await hooks.post(call("post", tenant, "q", answer=said))
    assert answer.response is not None
    assert answer.response["choices"][0]["message"]["content"] == "Open Settings [faq#0]. Billing, see."
    citations = answer.response["x_gateway"]["citations"]
    assert [(c["chunk_id"], c["title"]) for c in citations] == [("faq#0", "FAQ")] and citations[0][
        "score"
    ] > 0.25
    assert answer.annotations == {"citations": 1, "unknown_citations": 2, "verified_against": "retrieved"}


async def test_post_without_the_retrieved_set_checks_the_store(
    rag: tuple[Rag, str, list[dict[str, Any]]],
) -> None:
    """Another replica ran the pre hook: a citation must still name a chunk of the tenant's collection."""
    hooks, tenant, _ = rag
    answer = await hooks.post(
        call(
            "post",
            tenant,
            "q",
            answer="A [faq#1] B [faq#9]",
            request_id="elsewhere",
            unknown_citations="mark",
        )
    )
    assert answer.response is not None
    assert answer.response["choices"][0]["message"]["content"] == "A [faq#1] B [faq#9 (unverified)]"
    assert answer.response["x_gateway"]["citations"] == [
        {"doc_id": "faq", "chunk_id": "faq#1", "title": "FAQ", "score": None}
    ]
    other = await hooks.post(call("post", "someone-else", "q", answer="A [faq#1]", request_id="elsewhere"))
    assert other.response is not None and other.response["x_gateway"]["citations"] == []


async def test_another_tenants_request_id_does_not_reach_the_retrieved_set(
    rag: tuple[Rag, str, list[dict[str, Any]]],
) -> None:
    hooks, tenant, _ = rag
    await hooks.pre(call("pre", tenant, "How do I reset my password?", request_id="shared"))
    answer = await hooks.post(call("post", "intruder", "q", answer="[faq#0]", request_id="shared"))
    assert answer.response is not None and answer.response["x_gateway"]["citations"] == []


async def test_no_context_modes(rag: tuple[Rag, str, list[dict[str, Any]]]) -> None:
    hooks, tenant, _ = rag
    off = "Who won the football league?"
    unknown = await hooks.pre(call("pre", tenant, off))
    assert unknown.action == "respond" and unknown.response is not None
    assert "not" in unknown.response["choices"][0]["message"]["content"]
    assert (await hooks.pre(call("pre", tenant, off, on_no_context="pass"))).action == "continue"
    with pytest.raises(Rejected) as refused:
        await hooks.pre(call("pre", tenant, off, on_no_context="reject"))
    assert refused.value.answer.status == 422 and refused.value.answer.code == "no_context"


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"collection": ""},
        {"collection": "c", "top_k": 0},
        {"collection": "c", "mode": "fuzzy"},
        {"collection": "c", "on_no_context": "guess"},
        {"collection": "c", "filter": []},
        {"collection": "c", "min_score": "high"},
    ],
)
def test_bad_route_options_are_a_protocol_error(config: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        options(config)


async def test_a_refused_embedding_refuses_the_request_and_a_failed_one_fails_the_plugin(
    rag: tuple[Rag, str, list[dict[str, Any]]],
) -> None:
    hooks, tenant, _ = rag
    with pytest.raises(Rejected) as refused:  # e.g. the caller's budget is spent
        await hooks.pre(call("pre", tenant, "status 429"))
    assert refused.value.answer.status == 429 and refused.value.answer.code == "embedding_refused"
    with pytest.raises(EmbeddingError):  # a 500 from the SDK's app: the route's on_error decides
        await hooks.pre(call("pre", tenant, "status 502"))


async def test_with_nothing_retrieved_every_citation_is_unknown(
    rag: tuple[Rag, str, list[dict[str, Any]]],
) -> None:
    hooks, tenant, _ = rag
    passed = await hooks.pre(call("pre", tenant, "Who won the football league?", on_no_context="pass"))
    assert passed.action == "continue"
    answer = await hooks.post(call("post", tenant, "q", answer="It was them [faq#0].", on_no_context="pass"))
    assert answer.response is not None
    assert answer.response["choices"][0]["message"]["content"] == "It was them."
    assert answer.response["x_gateway"]["citations"] == []
