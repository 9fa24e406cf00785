"""``redis+cluster://``: redis-py's ``RedisCluster`` behind the interface of the gateway's own client.

The library does the cluster's work: the slot map, following MOVED (the slot moved: map refreshed)
and ASK (the slot is migrating: ASKING, then the command on the importing node), TRYAGAIN, and
re-reading the topology after a failover. This adapter only makes it look like ``RespClient`` to
the store and the breakers:

* error replies come back as ``ReplyError`` whose text starts with the Redis error code, as the
  wire has it (redis-py strips the code into ``status_code``), so ``NOSCRIPT`` reloads the script
  and every other refusal maps to "unavailable" at the store's one boundary;
* an unreachable node, a failed topology refresh or a passed deadline raise ``ConnectionError`` /
  ``TimeoutError`` (``OSError``s), like ``resp.py``;
* replies are the raw RESP2 shapes (a hash reply flattened back to a list).

No re-sends after a connection error or timeout (``retries=0``): the command may have run, and only
the store knows whether running it again is safe (the settler re-sends idempotent settlements). A
redirect is not such a case: a MOVED/ASK/TRYAGAIN reply means the command did not run, and the
library follows it within the call's deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from gateway.store.resp import Arg, Command, ReplyError
from gateway.store.topology import Topology


class ClusterClient:
    """A ``topology.Client`` over ``RedisCluster``; every call has one deadline, ``timeout_s``."""

    def __init__(self, topo: Topology, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topo.nodes],
            username=topo.username,
            password=topo.password,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    async def execute(self, *args: Arg) -> Any:
        (reply,) = await self.pipeline([args])
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Command], *, linger_s: float = 0.0) -> list[Any]:
        """One after the other, in order (a pipeline of the store or the breakers stays in one slot)."""
        async with asyncio.timeout(self.timeout_s):
            return [await self._one(command) for command in commands]

    def submit(
        self,
        commands: Sequence[Command],
        *,
        linger_s: float = 0.0,
        now: bool = False,
        ahead: bool = False,
        eager: bool = False,
    ) -> asyncio.Future[list[Any]]:
        """Started now, awaited later; the write-timing hints of ``RespClient`` do not apply here."""
        return asyncio.ensure_future(self.pipeline(commands))

    async def _one(self, command: Command) -> Any:
        try:
            reply = await self._cluster.execute_command(*command)
        except ResponseError as exc:  # NOSCRIPT, CLUSTERDOWN, TRYAGAIN or MOVED past the redirect limit, ...
            code = getattr(exc, "status_code", None)
            return ReplyError(f"{code} {exc}" if code else str(exc))
        except (RedisError, RedisClusterException) as exc:  # no node reachable, LOADING, a timeout
            raise ConnectionError(f"redis cluster: {type(exc).__name__}: {exc}") from exc
        if isinstance(reply, dict):  # HGETALL, CONFIG GET: back to the flat RESP2 list
            return [item for pair in reply.items() for item in pair]
        return reply

    def drop(self) -> None:
        """Nothing to do: the library re-reads the topology after MOVED or a lost node by itself."""

    async def close(self) -> None:
        await self._cluster.aclose()
