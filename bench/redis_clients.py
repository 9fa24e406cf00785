"""CPU per store call: the gateway's lean client against redis-py, one server, a Sentinel primary, a Cluster.

Why it exists: STYLE.md asks for the library wherever the core's own Redis client lacks a feature,
unless a measurement says otherwise. This is that measurement (gateway/store/topology.py quotes it).
Each client runs the admission script (the store's per-request call) ``--calls`` times, ``--concurrency``
at a time, against real redis-servers on loopback; the figure is the client process's CPU time per
call (Redis runs in other processes), best of ``--rounds``.

    python -m bench.redis_clients [--calls 20000] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from redis_server import RedisServer
from redis_topologies import Cluster, SentinelGroup

from gateway.store.base import Ask, ScopeLimits
from gateway.store.redis import RedisStore

SCOPE = ScopeLimits("t", rpm=10**9, tpm=10**12, budget_nano=10**18)


async def measure(run: Callable[[int], Awaitable[Any]], calls: int, concurrency: int) -> float:
    """CPU µs per call, ``concurrency`` calls in flight."""
    for i in range(200):  # warm: connections, script loads
        await run(i)
    started = time.process_time()
    for base in range(0, calls, concurrency):
        await asyncio.gather(*(run(base + j) for j in range(concurrency)))
    return (time.process_time() - started) / calls * 1e6


def admit_with(store: RedisStore) -> Callable[[int], Awaitable[Any]]:
    def run(i: int) -> Awaitable[Any]:
        return store.admit(
            Ask(f"r{i}", "acme", (SCOPE,), tokens=10, cost_nano=1, now=time.time(), lease_s=60)
        )

    return run


def redis_py_admit(client: Any, store: RedisStore) -> Callable[[int], Awaitable[Any]]:
    """The same EVALSHA as the store sends, through a redis-py client."""
    script = store._admit

    def run(i: int) -> Awaitable[Any]:
        now_ms = int(time.time() * 1000)
        base = "gw:{acme}"
        keys = [f"{base}:res", f"{base}:lease", f"{base}:done:r{i}"]
        keys += [f"{base}:rpm:t", f"{base}:tpm:t", f"{base}:spent:t:0"]
        args = [now_ms, now_ms + 60_000, 120, f"r{i}", 10, 1, "t", 10**9, 10**12, 10**18]
        return client.evalsha(script.sha, len(keys), *keys, *args)

    return run


async def main(calls: int, concurrency: int, rounds: int) -> None:
    import redis.asyncio as aredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.sentinel import Sentinel

    work = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    single = RedisServer().start()
    group = SentinelGroup(work / "sentinel", replicas=1).start()
    cluster = Cluster(work / "cluster").start()
    try:
        lean = RedisStore(single.url, timeout_s=5)
        sentinel_lean = RedisStore(group.url, timeout_s=5)
        cluster_store = RedisStore(cluster.url, timeout_s=5)
        plain_py = aredis.Redis(port=single.port)
        sentinel_py = Sentinel([("127.0.0.1", s.port) for s in group.sentinels]).master_for(group.master)
        cluster_py = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        await lean.admit(Ask("load", "acme", (SCOPE,), 1, 1, time.time(), 60))  # loads the script
        await sentinel_lean.admit(Ask("load", "acme", (SCOPE,), 1, 1, time.time(), 60))
        await cluster_store.admit(Ask("load", "acme", (SCOPE,), 1, 1, time.time(), 60))
        cases = {
            "redis://  lean client (resp.py)": admit_with(lean),
            "redis://  redis-py asyncio Redis": redis_py_admit(plain_py, lean),
            "sentinel  lean client at the Sentinels' primary": admit_with(sentinel_lean),
            "sentinel  redis-py Sentinel.master_for": redis_py_admit(sentinel_py, lean),
            "cluster   redis-py RedisCluster (raw)": redis_py_admit(cluster_py, lean),
            "cluster   RedisStore over ClusterClient": admit_with(cluster_store),
        }
        print(f"CPU µs per admission, {calls} calls, {concurrency} in flight, best of {rounds}")
        for name, run in cases.items():
            best = min([await measure(run, calls, concurrency) for _ in range(rounds)])
            print(f"  {name:50s} {best:7.1f}")
        for closing in (lean, sentinel_lean, cluster_store):
            await closing.close()
        await plain_py.aclose()
        await sentinel_py.aclose()
        await cluster_py.aclose()
    finally:
        cluster.stop()
        group.stop()
        single.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args()
    asyncio.run(main(a.calls, a.concurrency, a.rounds))
