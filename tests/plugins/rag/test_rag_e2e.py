"""RAG end to end: the live gateway (mock provider for chat and embeddings), `python -m plugins.rag serve`
on its embedded Postgres and, in a second run, on a Postgres started separately and reached over TCP by
RAG_DATABASE_URL; documents in through /v1/plugins/rag, questions through the openai SDK."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from conftest import LiveServer, free_port
from rag_helpers import (
    BUDGETS,
    DIMS,
    KEY_A,
    KEY_B,
    OPERATOR,
    RagProcess,
    embedded_url,
    make_pdf,
    pg_tcp_fixture,  # noqa: F401  (a fixture)
    routes,
)

from gateway.app import create_app
from gateway.delegation import SECRET_ENV
from gateway.settings import Settings
from plugins.rag.hooks import UNKNOWN_ANSWER

pytestmark = pytest.mark.slow  # a sidecar process and a Postgres beside the live gateway

HANDBOOK_MD = """# Support handbook

## Passwords

To reset your password, open Settings, choose Security and press Reset password. A reset link is
emailed to you and expires after 30 minutes.

## Billing

Invoices are issued on the first day of each month and can be downloaded as PDF from the Billing page.
"""
HANDBOOK_HTML = """<html><head><title>Shipping guide</title></head><body>
<h1>Shipping guide</h1>
<h2>Delivery times</h2><p>Parcels within the country arrive in two to three working days.</p>
<h2>Returns</h2><p>Returns are accepted within fourteen days of delivery with the original receipt.</p>
</body></html>"""
WARRANTY_PDF = make_pdf(
    [
        "The warranty covers manufacturing defects of the espresso machine for two years.",
        "Descaling the espresso machine every month keeps the warranty valid.",
    ],
    title="Warranty terms",
)


@dataclass
class Stack:
    gateway: LiveServer
    rag: RagProcess
    database_url: str

    def http(self, key: str = KEY_A) -> httpx.Client:
        return httpx.Client(
            base_url=self.gateway.url + "/v1/plugins/rag",
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )

    def client(self, task: str, key: str = KEY_A) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.url + "/v1",
            api_key=key,
            max_retries=0,
            default_headers={"x-gateway-task": task},
        )


@pytest.fixture(scope="module", params=["embedded", "tcp"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("rag")
    data = Path(tempfile.mkdtemp(prefix="rag-e2e-")) / "data"  # not tmp_path: see rag_helpers
    env: dict[str, str] = {
        "PLUGIN_DATA_DIR": str(data),
        "RAG_EMBEDDING_DIMENSIONS": str(DIMS),
        "RAG_SYNC_CHUNKS": "4",
        "RAG_EMBEDDING_BATCH": "4",
        "RAG_CHUNK_TOKENS": "64",
        "RAG_CHUNK_OVERLAP": "8",
        "RAG_MAX_UPLOAD_BYTES": "200000",
    }
    if request.param == "tcp":
        env["RAG_DATABASE_URL"] = request.getfixturevalue("pg_tcp")
    rag_port = free_port()
    saved = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = "s" * 40
    (tmp / "routes.yaml").write_text(routes(f"http://127.0.0.1:{rag_port}"))
    (tmp / "budgets.yaml").write_text(BUDGETS)
    settings = Settings(
        routes_path=str(tmp / "routes.yaml"),
        budgets_path=str(tmp / "budgets.yaml"),
        admin_key=OPERATOR,
        ledger_url=f"sqlite:///{tmp / 'ledger.sqlite3'}",
    )
    gateway = LiveServer(create_app(settings)).start()
    rag = RagProcess({**env, "GATEWAY_URL": gateway.url}, port=rag_port).wait_ready()
    url = env.get("RAG_DATABASE_URL") or embedded_url(data)
    try:
        yield Stack(gateway, rag, url)
    finally:
        rag.stop()
        gateway.stop()
        shutil.rmtree(data.parent, ignore_errors=True)
        if saved is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = saved


def ingest(stack: Stack) -> None:
    with stack.http() as http:
        md = http.post(
            "/collections/handbook/documents",
            json={
                "id": "handbook",
                "text": HANDBOOK_MD,
                "format": "markdown",
                "metadata": {"team": "support"},
            },
        )
        assert md.status_code == 200, md.text
        assert md.json()["id"] == "handbook" and md.json()["chunks"] >= 2
        html = http.post(
            "/collections/handbook/documents",
            files={"file": ("shipping.html", HANDBOOK_HTML.encode(), "text/html")},
            data={"id": "shipping", "metadata": '{"team": "logistics"}'},
        )
        assert html.status_code == 200, html.text
        pdf = http.post(
            "/collections/handbook/documents",
            files={"file": ("warranty.pdf", WARRANTY_PDF, "application/pdf")},
            data={"id": "warranty"},
        )
        assert pdf.status_code == 200, pdf.text


def search(stack: Stack, query: str, key: str = KEY_A, **extra: Any) -> list[dict[str, Any]]:
    with stack.http(key) as http:
        found = http.post("/collections/handbook/search", json={"query": query, "top_k": 5, **extra})
    assert found.status_code == 200, found.text
    results: list[dict[str, Any]] = found.json()["results"]
    return results


def test_documents_of_each_format_are_found_by_search(stack: Stack) -> None:
    ingest(stack)
    with stack.http() as http:
        listed = http.get("/collections/handbook/documents").json()["data"]
        assert {d["id"] for d in listed} == {"handbook", "shipping", "warranty"}
        assert {d["id"]: d["format"] for d in listed} == {
            "handbook": "markdown",
            "shipping": "html",
            "warranty": "pdf",
        }
        got = http.get("/collections/handbook/documents/warranty", params={"chunks": "true"}).json()
        assert got["title"] == "Warranty terms" and got["chunk_list"][1]["page"] == 2
    top = search(stack, "how do I reset my password")[0]
    assert top["doc_id"] == "handbook" and "Reset password" in top["text"]
    assert top["title"] == "Support handbook" and top["heading"] == "Support handbook > Passwords"
    assert search(stack, "returns within fourteen days receipt")[0]["doc_id"] == "shipping"
    assert search(stack, "espresso machine warranty defects")[0]["doc_id"] == "warranty"
    for mode in ("vector", "keyword"):
        assert search(stack, "reset password", mode=mode)[0]["doc_id"] == "handbook"
    only = search(stack, "reset password", filter={"team": "logistics"})
    assert only and {r["doc_id"] for r in only} == {"shipping"}


def test_an_answer_is_grounded_and_its_citations_checked(stack: Stack) -> None:
    ingest(stack)
    question = "How do I reset my password? See [handbook#0] and [ghost#7]."
    answer = stack.client("support").chat.completions.create(
        model="mock-chat", messages=[{"role": "user", "content": question}]
    )
    text = answer.choices[0].message.content or ""
    # the mock echoes the last user turn: its citations are the ones the post hook must check
    assert "[handbook#0]" in text and "ghost#7" not in text
    extra = answer.model_extra["x_gateway"]
    assert [c["chunk_id"] for c in extra["citations"]] == ["handbook#0"]
    cited = extra["citations"][0]
    assert cited["doc_id"] == "handbook" and cited["title"] == "Support handbook" and cited["score"] > 0.25
    notes = extra["plugins"]["rag"]
    assert notes["retrieved"] >= 1 and notes["citations"] == 1 and notes["unknown_citations"] == 1

    # chunks of the HTML and the PDF document are cited with their titles and heading paths (pages)
    for asked, cid, title, heading in (
        (
            "How long does the espresso machine warranty cover defects? [warranty#0]",
            "warranty#0",
            "Warranty terms",
            "page 1",
        ),
        (
            "Are returns accepted after delivery with the receipt? [shipping#1]",
            "shipping#1",
            "Shipping guide",
            "Shipping guide > Returns",
        ),
    ):
        got = stack.client("support").chat.completions.create(
            model="mock-chat", messages=[{"role": "user", "content": asked}]
        )
        (citation,) = got.model_extra["x_gateway"]["citations"]
        assert (citation["chunk_id"], citation["title"], citation["heading"]) == (cid, title, heading)

    marked = stack.client("support-mark").chat.completions.create(
        model="mock-chat", messages=[{"role": "user", "content": question}]
    )
    assert "[ghost#7 (unverified)]" in (marked.choices[0].message.content or "")


def test_a_streamed_answer_carries_the_checked_citations(stack: Stack) -> None:
    ingest(stack)
    chunks = list(
        stack.client("support").chat.completions.create(
            model="mock-chat",
            messages=[{"role": "user", "content": "How do I reset my password? [handbook#0] [ghost#2]"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "[handbook#0]" in text and "ghost#2" not in text
    carrying = [
        c.model_extra["x_gateway"]
        for c in chunks
        if c.model_extra and "citations" in c.model_extra.get("x_gateway", {})
    ]
    assert len(carrying) == 1 and [c["chunk_id"] for c in carrying[0]["citations"]] == ["handbook#0"]
    assert chunks[-1].usage is not None


def test_no_relevant_context_each_mode(stack: Stack) -> None:
    ingest(stack)
    off_topic = [{"role": "user", "content": "Which football team won the league in nineteen ninety?"}]
    unknown = stack.client("support").chat.completions.with_raw_response.create(
        model="mock-chat", messages=off_topic
    )
    parsed = unknown.parse()
    assert parsed.choices[0].message.content == UNKNOWN_ANSWER
    assert unknown.headers["x-gateway-cost-usd"] == "0"  # no model was called
    assert parsed.model_extra["x_gateway"]["citations"] == []
    streamed = list(
        stack.client("support").chat.completions.create(model="mock-chat", messages=off_topic, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == UNKNOWN_ANSWER

    passed = stack.client("support-pass").chat.completions.create(model="mock-chat", messages=off_topic)
    assert passed.choices[0].message.content == "Mock reply: " + off_topic[0]["content"]
    assert passed.model_extra["x_gateway"]["plugins"]["rag"]["on_no_context"] == "pass"

    with pytest.raises(openai.UnprocessableEntityError) as refused:
        stack.client("support-reject").chat.completions.create(model="mock-chat", messages=off_topic)
    assert refused.value.code == "no_context"


def test_a_condensed_query_answers_a_follow_up(stack: Stack) -> None:
    ingest(stack)
    messages: Any = [
        {"role": "user", "content": "Tell me about the espresso machine warranty."},
        {"role": "assistant", "content": "It covers defects."},
        {"role": "user", "content": "And how long?"},
    ]
    answer = stack.client("support").chat.completions.create(model="mock-chat", messages=messages)
    notes = answer.model_extra["x_gateway"]["plugins"]["rag"]
    assert notes["query"] == "condensed" and notes["retrieved"] >= 1


def test_another_tenant_cannot_list_search_get_or_delete(stack: Stack) -> None:
    ingest(stack)
    with stack.http(KEY_B) as b:
        assert b.get("/collections/handbook/documents").json()["data"] == []
        for doc in ("handbook", "warranty", "doc-0000000000000000"):
            assert b.get(f"/collections/handbook/documents/{doc}").status_code == 404
            assert b.delete(f"/collections/handbook/documents/{doc}").status_code == 404
        assert b.get("/collections/handbook/documents/handbook", params={"chunks": "true"}).status_code == 404
    for mode in ("hybrid", "vector", "keyword"):
        assert search(stack, "reset password", key=KEY_B, mode=mode) == []
    # B asking on the support route gets no context from A's documents
    answer = stack.client("support", key=KEY_B).chat.completions.create(
        model="mock-chat", messages=[{"role": "user", "content": "How do I reset my password? [handbook#0]"}]
    )
    assert answer.choices[0].message.content == UNKNOWN_ANSWER
    # ... and A's documents are all still there
    with stack.http() as a:
        assert a.get("/collections/handbook/documents/handbook").status_code == 200
    # without the plugin token, the sidecar answers nobody, whatever tenant header is claimed
    direct = httpx.get(
        stack.rag.url + "/api/collections/handbook/documents", headers={"x-gateway-tenant": "acme"}
    )
    assert direct.status_code == 401


def test_a_deleted_document_is_gone_from_every_query_path(stack: Stack) -> None:
    ingest(stack)
    with stack.http() as http:
        assert http.delete("/collections/handbook/documents/warranty").json()["deleted"] is True
        assert http.get("/collections/handbook/documents/warranty").status_code == 404
        assert "warranty" not in {d["id"] for d in http.get("/collections/handbook/documents").json()["data"]}
        assert http.delete("/collections/handbook/documents/warranty").status_code == 404
    for mode in ("hybrid", "vector", "keyword"):
        assert all(r["doc_id"] != "warranty" for r in search(stack, "espresso machine warranty", mode=mode))
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT count(*) FROM rag_chunks WHERE doc_id = 'warranty'").fetchone()
        vectors = conn.execute("SELECT count(embedding) FROM rag_chunks").fetchone()
        docs = conn.execute("SELECT count(*) FROM rag_documents WHERE doc_id = 'warranty'").fetchone()
    assert rows == (0,) and docs == (0,) and vectors is not None and vectors[0] > 0


def test_reingesting_replaces_and_keeps_chunk_ids(stack: Stack) -> None:
    ingest(stack)
    with stack.http() as http:
        before = http.get("/collections/handbook/documents/handbook", params={"chunks": "true"}).json()
        ingest(stack)
        again = http.get("/collections/handbook/documents/handbook", params={"chunks": "true"}).json()
        assert [c["chunk_id"] for c in again["chunk_list"]] == [c["chunk_id"] for c in before["chunk_list"]]
        assert again["content_hash"] == before["content_hash"]
        changed = http.post(
            "/collections/handbook/documents",
            json={"id": "handbook", "text": "# Only\n\nOne line about refunds."},
        )
        assert changed.json()["chunks"] == 1
    assert all("Reset password" not in r["text"] for r in search(stack, "reset password Settings Security"))


def test_a_large_document_is_a_job_with_progress(stack: Stack) -> None:
    text = "\n\n".join(
        f"Section {i}: the turbine number {i} needs oiling every {i} weeks." * 3 for i in range(12)
    )
    with stack.http() as http:
        started = http.post("/collections/manuals/documents", json={"id": "turbines", "text": text})
        assert started.status_code == 202, started.text
        job = started.json()
        assert job["status"] in ("queued", "running", "succeeded") and job["chunks_total"] > 4
        deadline = time.monotonic() + 30
        while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.05)
            job = http.get(f"/jobs/{job['job_id']}").json()
        assert job["status"] == "succeeded", job
        assert job["chunks_embedded"] == job["chunks_total"]
        assert http.get("/collections/manuals/documents/turbines").json()["chunks"] == job["chunks_total"]
    with stack.http(KEY_B) as b:
        assert b.get(f"/jobs/{job['job_id']}").status_code == 404


def test_an_upload_over_the_limit_is_a_413(stack: Stack) -> None:
    with stack.http() as http:
        big = http.post(
            "/collections/handbook/documents", files={"file": ("big.txt", b"word " * 60_000, "text/plain")}
        )
    assert big.status_code == 413 and big.json()["error"]["code"] == "upload_too_large"


def test_ingestion_and_query_embeddings_are_in_the_callers_spend(stack: Stack) -> None:
    def spent(tenant: str) -> float:
        r = httpx.get(
            stack.gateway.url + "/admin/spend",
            params={"tenant": tenant},
            headers={"authorization": f"Bearer {OPERATOR}"},
        )
        assert r.status_code == 200, r.text
        return float(r.json()["spent_usd"])

    def settled(tenant: str, above: float) -> float:
        deadline = time.monotonic() + 5  # spend is settled just after each answer is sent
        while (now := spent(tenant)) <= above and time.monotonic() < deadline:
            time.sleep(0.05)
        return now

    a0, b0 = spent("acme"), spent("globex")
    with stack.http() as http:
        http.post(
            "/collections/pricing/documents", json={"id": "p", "text": "The enterprise plan costs ten euros."}
        )
    a1 = settled("acme", a0)
    assert a1 > a0  # the ingestion's embeddings, priced to the caller's tenant
    search(stack, "enterprise plan price")
    assert settled("acme", a1) > a1  # the query's embedding too
    assert spent("globex") == b0


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "code"),
    [
        ("post", "/collections/bad name/documents", {"json": {"text": "x"}}, "invalid_value"),
        ("post", "/collections/c/documents", {"json": {"text": ""}}, "invalid_value"),
        ("post", "/collections/c/documents", {"json": {"text": "x", "id": "a#1"}}, "invalid_value"),
        ("post", "/collections/c/documents", {"json": {"text": "x", "format": "docx"}}, "invalid_value"),
        ("post", "/collections/c/documents", {"json": {"text": "x", "metadata": [1]}}, "invalid_value"),
        ("post", "/collections/c/documents", {"content": b"not json"}, "invalid_json"),
        (
            "post",
            "/collections/c/documents",
            {"files": {"file": ("a.txt", b"text", "text/plain")}, "data": {"metadata": "{oops"}},
            "invalid_json",
        ),
        (
            "post",
            "/collections/c/documents",
            {"files": {"other": ("a.txt", b"x", "text/plain")}},
            "missing_file",
        ),
        (
            "post",
            "/collections/c/documents",
            {"files": {"file": ("a.pdf", b"%PDF-1.4 broken", "application/pdf")}},
            "unparsable_document",
        ),
        ("post", "/collections/c/search", {"json": {"query": "x", "top_k": 0}}, "invalid_value"),
        ("post", "/collections/c/search", {"json": {"query": "x", "mode": "fuzzy"}}, "invalid_value"),
        ("post", "/collections/c/search", {"json": {"query": "x", "filter": "team"}}, "invalid_value"),
        ("get", "/collections/c/documents", {"params": {"limit": "0"}}, "invalid_value"),
    ],
)
def test_bad_api_input_is_a_clear_400(
    stack: Stack, method: str, path: str, kwargs: dict[str, Any], code: str
) -> None:
    with stack.http() as http:
        r = getattr(http, method)(path, **kwargs)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
