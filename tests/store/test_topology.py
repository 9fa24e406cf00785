"""Store URLs beyond one server: parsing, a real 3-master Cluster, a real Sentinel-watched primary."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_topologies import Cluster, SentinelGroup, wait_until

from gateway.store.base import Ask, ScopeLimits, Settlement, Spend, StoreUnavailableError
from gateway.store.cluster import ClusterClient
from gateway.store.redis import RedisStore
from gateway.store.resp import Endpoint, RespClient
from gateway.store.topology import Topology, connect, parse_url

T0 = 1_700_000_000.0
SCOPE = ScopeLimits("t", rpm=100_000, budget_nano=10**12)


def ask(request_id: str, tenant: str = "acme") -> Ask:
    return Ask(request_id, tenant, (SCOPE,), tokens=10, cost_nano=100, now=T0, lease_s=60.0)


def settlement(request_id: str, tenant: str = "acme", cost_nano: int = 70) -> Settlement:
    return Settlement(request_id, tenant, (SCOPE,), 10, 10, cost_nano, T0)


# -- URLs -----------------------------------------------------------------------------------------------


def test_sentinel_urls() -> None:
    assert parse_url("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster/3") == Topology(
        "sentinel",
        "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster/3",
        (("10.0.0.1", 26379), ("10.0.0.2", 26380)),
        "mymaster",
        3,
    )
    topo = parse_url("redis+sentinel://gw:s%40cret@s1,s2:5000/main")
    assert (topo.nodes, topo.master, topo.db) == ((("s1", 26379), ("s2", 5000)), "main", 0)
    assert (topo.username, topo.password) == ("gw", "s@cret")
    assert parse_url("redis+sentinel://:pw@s1/main").password == "pw"
    assert parse_url("redis+sentinel://[::1]:26379/main").nodes == (("::1", 26379),)


def test_cluster_urls() -> None:
    topo = parse_url("redis+cluster://h1:7000,h2:7001,h3")
    assert (topo.kind, topo.nodes) == ("cluster", (("h1", 7000), ("h2", 7001), ("h3", 6379)))
    assert parse_url("redis+cluster://pw@h1:7000").password == "pw"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:6379", "unsupported redis URL"),
        ("h1:6379", "unsupported redis URL"),
        ("redis+sentinel://h1:26379", "name the primary"),
        ("redis+sentinel://h1:26379/m/x", "db must be a number"),
        ("redis+sentinel://h1:26379/m/0/extra", "name the primary"),
        ("redis+sentinel:///m", "names no sentinel host"),
        ("redis+cluster://h1:7000/0", "a cluster has only db 0"),
        ("redis+cluster://h1:port", "bad host:port"),
        ("redis+cluster://user:secret@h1:x", "***@h1:x"),  # the password is never in the message
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("*", r"\*")) as caught:
        parse_url(url)
    assert "secret" not in str(caught.value)


def test_a_plain_url_keeps_the_lean_client() -> None:
    client = connect("redis://127.0.0.1:6390/2", timeout_s=0.3)
    assert isinstance(client, RespClient)
    assert client.endpoint == Endpoint(port=6390, db=2)
    assert isinstance(connect("redis+cluster://127.0.0.1:7000", timeout_s=0.3), ClusterClient)


# -- Cluster --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield made.start()
    finally:
        made.stop()


def tenants_on_every_node(cluster: Cluster) -> list[str]:
    """One tenant name per node, each hashing to a slot that node serves."""
    found: dict[int, str] = {}
    for i in range(200):
        name = f"tenant-{i}"
        found.setdefault(cluster.owner(cluster.slot_of(name)).port, name)
        if len(found) == len(cluster.nodes):
            return list(found.values())
    raise AssertionError("no tenant names spread over every node")


@pytest.mark.redis
async def test_a_cluster_store_keeps_the_contract_on_every_node(cluster: Cluster) -> None:
    store = RedisStore(cluster.url, timeout_s=2.0)
    try:
        tenants = tenants_on_every_node(cluster)
        for tenant in tenants:
            assert (await store.admit(ask(f"{tenant}-r1", tenant))).admitted
            assert (await store.spend(tenant, SCOPE, now=T0)).reserved_nano == 100
            await store.settle(settlement(f"{tenant}-r1", tenant))
            spend = await store.spend(tenant, SCOPE, now=T0)
            assert (spend.spent_nano, spend.reserved_nano) == (70, 0)
            key = f"gw:{{{tenant}}}:cache:abc"
            await store.cache_put(key, b"answer", 60)
            assert await store.cache_get(key) == b"answer"
            assert await store.cache_lookup(key) == b"answer"
        await store.put_key("f" * 64, {"id": "k1", "tenant": tenants[0]})
        assert [r["id"] for r in await store.list_keys()] == ["k1"]
        assert await store.keys_version() == 1
        assert await store.ping() is True
        assert await store.eviction_policy() == "noeviction"
        # Every node forgets the scripts (a restart, a new node): EVALSHA gets NOSCRIPT, the store
        # loads the script (on every primary) and runs it once more.
        for node in cluster.nodes:
            with node.client() as c:
                c.script_flush()
        for tenant in tenants:
            assert (await store.admit(ask(f"{tenant}-r2", tenant))).admitted
    finally:
        await store.close()


@pytest.mark.redis
async def test_a_cluster_nobody_answers_is_unavailable() -> None:
    from redis_topologies import cluster_port

    store = RedisStore(f"redis+cluster://127.0.0.1:{cluster_port()}", timeout_s=0.3)
    try:
        with pytest.raises(StoreUnavailableError):
            await store.admit(ask("r1"))
        with pytest.raises(StoreUnavailableError):
            await store.cache_lookup("gw:{acme}:cache:x")
        assert await store.ping() is False
    finally:
        await store.close()


# -- Sentinel -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.redis
async def test_a_sentinel_store_follows_a_failover(tmp_path: Path) -> None:
    """SENTINEL FAILOVER demotes the primary without killing it: it answers READONLY, the store drops
    that connection, asks the Sentinels again and carries on with the new primary."""
    group = SentinelGroup(tmp_path, replicas=1)
    try:
        group.start()
        store = RedisStore(group.url, timeout_s=0.5)
        first = group.primary.port
        assert (await store.admit(ask("before"))).admitted
        with group.sentinels[0].client() as c:
            c.execute_command("SENTINEL", "FAILOVER", group.master)
        wait_until(lambda: group.current_primary_port() != first, 20, "the Sentinels to promote the replica")
        with group.primary.client() as old:
            wait_until(
                lambda: old.info("replication")["role"] == "slave", 20, "the old primary to be demoted"
            )
        outcomes = []
        for i in range(50):  # READONLY (or a lost connection) at most a few times, then the new primary
            try:
                outcomes.append((await store.admit(ask(f"after-{i}"))).admitted)
                if outcomes[-3:] == [True, True, True]:
                    break
            except StoreUnavailableError:
                outcomes.append(False)
            await asyncio.sleep(0.05)
        assert outcomes[-3:] == [True, True, True], outcomes
        with group.node(group.current_primary_port()).client() as c:
            assert c.hexists("gw:{acme}:res", "r:after-0") or not outcomes[0]
        await store.close()
    finally:
        group.stop()


@pytest.mark.slow
@pytest.mark.redis
async def test_a_sentinel_settlement_counts_once_a_replica_has_it(tmp_path: Path) -> None:
    """Replication is asynchronous: a settlement only the primary has is lost if it dies. Under
    Sentinel the store says "unavailable" until a replica confirms (WAIT), so the settler re-sends;
    the re-send counts once, the first copy having left a settled marker."""
    group = SentinelGroup(tmp_path, replicas=1)
    try:
        group.start()
        store = RedisStore(group.url, timeout_s=0.5)
        (replica,) = group.replicas
        assert replica.proc is not None
        assert (await store.admit(ask("r1"))).admitted
        os.kill(replica.proc.pid, signal.SIGSTOP)  # the replica confirms nothing
        try:
            with pytest.raises(StoreUnavailableError, match="no replica confirmed"):
                await store.settle(settlement("r1"))
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        await store.settle(settlement("r1"))  # the settler's re-send, confirmed this time
        assert (await store.spend("acme", SCOPE, now=T0)) == Spend(spent_nano=70, reserved_nano=0)
        with replica.client() as c:  # and the replica has it: a failover now would keep it
            wait_until(lambda: c.get("gw:{acme}:spent:t:0") == b"70", 5, "the replica's copy")
        # The settlements of one event-loop turn share one WAIT (one replica round-trip per batch).
        with group.primary.client() as c:
            waits = lambda: int(c.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))  # noqa: E731
            before = waits()
            ids = [f"b{i}" for i in range(50)]
            assert all([a.admitted for a in await asyncio.gather(*(store.admit(ask(i)) for i in ids))])
            await asyncio.gather(*(store.settle(settlement(i)) for i in ids))
            assert waits() - before == 1
        assert (await store.spend("acme", SCOPE, now=T0)) == Spend(spent_nano=70 * 51, reserved_nano=0)
        await store.close()
    finally:
        group.stop()
