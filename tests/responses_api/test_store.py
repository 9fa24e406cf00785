"""The ResponseStore contract, on Redis and in-process: tenant isolation, delete, expiry, chains."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis

from gateway.responses_api.local import LocalResponseStore
from gateway.responses_api.shared import RedisResponseStore
from gateway.responses_api.store import (
    ChainTooLongError,
    ResponseNotFoundError,
    ResponseStore,
    StoredResponse,
    history_items,
    walk_chain,
)
from gateway.store.base import StoreUnavailableError
from gateway.store.redis import RedisStore


def turn(
    rid: str,
    prev: str | None = None,
    *,
    tenant: str = "acme",
    summary: str | None = None,
    deployment: str = "mock-a",
) -> StoredResponse:
    return StoredResponse(
        id=rid,
        tenant=tenant,
        created_at=1_700_000_000,
        previous_response_id=prev,
        input_items=[
            {
                "id": f"msg_{rid}",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": f"q {rid}"}],
            }
        ],
        response={
            "id": rid,
            "object": "response",
            "output": [
                {"type": "reasoning", "id": f"rs_{rid}", "summary": []},
                {
                    "type": "message",
                    "id": f"out_{rid}",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": f"a {rid}", "annotations": []}],
                },
            ],
        },
        deployment=deployment,
        summary=summary,
    )


async def test_put_get_round_trip_and_tenant_isolation(responses: ResponseStore) -> None:
    stored = turn("resp_1")
    await responses.put(stored, 60)
    assert await responses.get("acme", "resp_1") == stored
    # Another tenant's id behaves exactly as a missing one, on every operation.
    with pytest.raises(ResponseNotFoundError):
        await responses.get("globex", "resp_1")
    with pytest.raises(ResponseNotFoundError):
        await responses.chain("globex", "resp_1")
    assert await responses.delete("globex", "resp_1") is False
    assert await responses.get("acme", "resp_1") == stored


async def test_delete_then_missing(responses: ResponseStore) -> None:
    await responses.put(turn("resp_d"), 60)
    assert await responses.delete("acme", "resp_d") is True
    assert await responses.delete("acme", "resp_d") is False
    with pytest.raises(ResponseNotFoundError):
        await responses.get("acme", "resp_d")


async def test_chain_oldest_first_and_missing_link(responses: ResponseStore) -> None:
    await responses.put(turn("resp_a"), 60)
    await responses.put(turn("resp_b", "resp_a", deployment="removed-deployment"), 60)
    await responses.put(turn("resp_c", "resp_b"), 60)
    chain = await responses.chain("acme", "resp_c")
    assert [t.id for t in chain] == ["resp_a", "resp_b", "resp_c"]
    await responses.delete("acme", "resp_a")
    with pytest.raises(ResponseNotFoundError):
        await responses.chain("acme", "resp_c")


async def test_chain_stops_at_newest_summary(responses: ResponseStore) -> None:
    await responses.put(turn("resp_1"), 60)
    await responses.put(turn("resp_2", "resp_1", summary="old summary"), 60)
    await responses.put(turn("resp_3", "resp_2"), 60)
    await responses.put(turn("resp_4", "resp_3", summary="new summary"), 60)
    await responses.put(turn("resp_5", "resp_4"), 60)
    assert [t.id for t in await responses.chain("acme", "resp_5")] == ["resp_4", "resp_5"]
    # The turns behind a summary may expire or be deleted: the chain no longer needs them.
    await responses.delete("acme", "resp_1")
    assert [t.id for t in await responses.chain("acme", "resp_3")] == ["resp_2", "resp_3"]


async def test_chain_is_bounded() -> None:
    store = LocalResponseStore()
    await store.put(turn("resp_0"), 60)
    for i in range(1, 12):
        await store.put(turn(f"resp_{i}", f"resp_{i - 1}"), 60)
    assert len(await walk_chain(store.get, "acme", "resp_11", max_len=12)) == 12
    with pytest.raises(ChainTooLongError):
        await walk_chain(store.get, "acme", "resp_11", max_len=11)


def test_history_items_replays_inputs_then_outputs_without_reasoning() -> None:
    items = history_items([turn("resp_a"), turn("resp_b", "resp_a")])
    assert [i.get("id") for i in items] == ["msg_resp_a", "out_resp_a", "msg_resp_b", "out_resp_b"]
    summarized = history_items([turn("resp_a", summary="they talked about cats"), turn("resp_b")])
    assert summarized[0]["role"] == "developer"
    assert "they talked about cats" in summarized[0]["content"][0]["text"]
    assert [i.get("id") for i in summarized[1:]] == ["msg_resp_b", "out_resp_b"]


def test_history_items_keeps_function_calls() -> None:
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"}
    first = turn("resp_a")
    first.response["output"] = [call]
    items = history_items([first])
    assert items[-1] == call


async def test_local_expiry() -> None:
    store = LocalResponseStore()
    now = [1000.0]
    store._clock = lambda: now[0]  # type: ignore[method-assign]
    await store.put(turn("resp_e"), 30)
    assert (await store.get("acme", "resp_e")).id == "resp_e"
    now[0] += 31
    with pytest.raises(ResponseNotFoundError):
        await store.get("acme", "resp_e")


async def test_local_is_bounded() -> None:
    store = LocalResponseStore(max_entries=3)
    for i in range(5):
        await store.put(turn(f"resp_{i}"), 60)
    with pytest.raises(ResponseNotFoundError):
        await store.get("acme", "resp_0")
    assert (await store.get("acme", "resp_4")).id == "resp_4"


async def test_redis_key_slot_ttl_and_expiry(redis_url: str) -> None:
    store = RedisStore(redis_url)
    responses = RedisResponseStore(store)
    try:
        await responses.put(turn("resp_ttl"), 1)
        with redis.Redis.from_url(redis_url) as client:
            ttl = client.ttl("gw:{acme}:resp:resp_ttl")
            assert 0 < ttl <= 1
        deadline = time.monotonic() + 5
        while True:  # Redis expires it; bounded wait for the key to go
            try:
                await responses.get("acme", "resp_ttl")
            except ResponseNotFoundError:
                break
            assert time.monotonic() < deadline, "the key never expired"
            await asyncio.sleep(0.1)
    finally:
        await store.close()


async def test_redis_down_is_store_unavailable() -> None:
    store = RedisStore("redis://127.0.0.1:1", timeout_s=0.2)
    responses = RedisResponseStore(store)
    try:
        with pytest.raises(StoreUnavailableError):
            await responses.get("acme", "resp_x")
        with pytest.raises(StoreUnavailableError):
            await responses.put(turn("resp_x"), 60)
    finally:
        await store.close()


@pytest.mark.slow
async def test_redis_cluster_routes_each_tenants_turns(tmp_path: Path) -> None:
    """Through ``redis+cluster://``: each tenant's turns live in its own hash slot, wherever that is."""
    from redis_topologies import Cluster

    cluster = Cluster(tmp_path / "cluster").start()
    store = RedisStore(cluster.url, timeout_s=2.0)
    responses = RedisResponseStore(store)
    try:
        tenants = [f"tenant{i}" for i in range(12)]  # spread over the three masters' slots
        for t in tenants:
            await responses.put(turn("resp_1", tenant=t), 60)
            await responses.put(turn("resp_2", "resp_1", tenant=t), 60)
        for t in tenants:
            assert [x.id for x in await responses.chain(t, "resp_2")] == ["resp_1", "resp_2"]
            assert (await responses.get(t, "resp_2")).tenant == t
            assert await responses.delete(t, "resp_1") is True
            with pytest.raises(ResponseNotFoundError):
                await responses.chain(t, "resp_2")
    finally:
        await store.close()
        cluster.stop()
