"""Which Redis a URL names, and the client that talks to it.

``GATEWAY_REDIS_URL`` (and ``GATEWAY_CACHE_REDIS_URL``) take:

* ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path?db=N``: one
  server, through the gateway's own lean client (``resp.py``), exactly as before.
* ``redis+sentinel://[user:password@]h1:26379,h2:26379/<master>[/db]``: the primary that the
  Sentinels name. redis-py's ``Sentinel`` asks them (it skips a Sentinel that is down and a primary
  they consider down); the commands themselves go through the lean client, to that primary. Every
  dial asks again, so when the connection is lost (the primary died) or the primary answers READONLY
  (it was demoted; the store then drops the connection), the next call follows the failover.
  The user and password are the data nodes'; the Sentinels are asked without.
* ``redis+cluster://[user:password@]h1:7000,h2:7001``: a Redis Cluster, through redis-py's
  ``RedisCluster`` (slot map, MOVED/ASK redirects, TRYAGAIN, topology refresh), behind
  ``cluster.ClusterClient``. Every script of the store touches one hash slot (``{tenant}``,
  ``{admin}``, ``{breaker}`` hash tags).

Why the library serves these two and not ``resp.py``: STYLE.md asks for the library wherever the
core's own client lacks a feature, unless a measurement says otherwise. ``bench/redis_clients.py``
measured the client's CPU per admission (10,000 calls, 32 in flight, loopback, best of 3):

    redis://   lean client (resp.py)                      14 µs
    redis://   redis-py asyncio Redis                     62 µs
    sentinel   lean client at the Sentinels' primary      14 µs
    sentinel   redis-py Sentinel.master_for               67 µs
    cluster    redis-py RedisCluster, raw EVALSHA         66 µs
    cluster    RedisStore over ClusterClient              92 µs

Sentinel needs nothing on the command path, only "where is the primary" at connect time, so the
library answers that (``Sentinel.discover_master``) and the lean client carries the commands at
today's cost: ~50 µs per call saved, measured. A Cluster's work is on the command path (CRC16 slot
map, MOVED/ASK/TRYAGAIN, topology refresh, a connection set per node); that is the library's whole
job, and growing it by hand is what the rule forbids. The price, ~80 µs of CPU per store call (two
per request), is paid only by deployments that chose a cluster, which scale out by adding replicas;
if one ever turns out CPU-bound on it, this table is where to start.

Money on failover. Redis replicates asynchronously: a write a primary acknowledged and died before
passing on is gone once a replica is promoted. Under Sentinel a settlement (or release) is therefore
acknowledged only once a replica has it (``replicated.py``: ``WAIT 1``); unconfirmed, the
settler re-sends it, and the idempotent settle counts it once. Admissions are not confirmed (that
would put a replica's round-trip on every request): one lost in a failover loses its reservation,
not its cost, which the settlement still records. A cluster's primaries get no such confirmation
(WAIT would have to share the script's connection, which the library's pool does not promise): a
settlement acknowledged in the last milliseconds before a cluster primary dies may be lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol
from urllib.parse import unquote

from gateway.store.resp import Arg, Command, Endpoint, RespClient

Kind = Literal["single", "sentinel", "cluster"]


class Client(Protocol):
    """What the store and the breakers need from a Redis client (``RespClient`` is the model):
    error replies come back as ``ReplyError`` values (``pipeline``/``submit``) or raised
    (``execute``); an unreachable Redis raises ``ConnectionError``, a passed deadline
    ``TimeoutError`` (both ``OSError``)."""

    timeout_s: float

    async def execute(self, *args: Arg) -> Any: ...

    async def pipeline(self, commands: Sequence[Command], *, linger_s: float = 0.0) -> list[Any]: ...

    def submit(
        self,
        commands: Sequence[Command],
        *,
        linger_s: float = 0.0,
        now: bool = False,
        ahead: bool = False,
        eager: bool = False,
    ) -> asyncio.Future[list[Any]]: ...

    def drop(self) -> None:
        """Close the connection(s) now; the next call dials again (and re-discovers the primary)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Topology:
    kind: Kind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    """Sentinels (sentinel) or seed nodes (cluster)."""
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None


_SCHEMES: dict[str, Kind] = {
    "redis": "single",
    "rediss": "single",
    "unix": "single",
    "redis+sentinel": "sentinel",
    "redis+cluster": "cluster",
}


def parse_url(url: str) -> Topology:
    """Parse a store URL; ``ValueError`` naming what is wrong (checked at start-up, not per call)."""
    scheme, sep, rest = url.partition("://")
    kind = _SCHEMES.get(scheme.lower()) if sep else None
    if kind is None:
        raise ValueError(
            f"unsupported redis URL {_redacted(url)!r}: use redis://, rediss://, unix://, "
            "redis+sentinel://h1:26379,h2:26379/<master>[/db] or redis+cluster://h1:7000,h2:7001"
        )
    if kind == "single":
        Endpoint.from_url(url)  # fails now on a malformed one
        return Topology("single", url)
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0]
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) if user and colon else None
        password = unquote(secret if colon else user) or None
    default_port = 26379 if kind == "sentinel" else 6379
    nodes = tuple(_node(h, default_port, url) for h in hosts.split(",") if h)
    if not nodes:
        raise ValueError(f"redis URL {_redacted(url)!r} names no {kind} host")
    parts = [p for p in path.split("/") if p]
    if kind == "cluster":
        if parts:
            raise ValueError(f"redis URL {_redacted(url)!r}: a cluster has only db 0, no path")
        return Topology("cluster", url, nodes, username=username, password=password)
    if not parts or len(parts) > 2:
        raise ValueError(
            f"redis URL {_redacted(url)!r}: name the primary: redis+sentinel://hosts/<master>[/db]"
        )
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise ValueError(f"redis URL {_redacted(url)!r}: db must be a number") from None
    return Topology("sentinel", url, nodes, unquote(parts[0]), db, username, password)


def _node(text: str, default_port: int, url: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not colon:
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError(f"redis URL {_redacted(url)!r}: bad host:port {text!r}")
    return host, int(port)


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    _, at, tail = rest.rpartition("@")
    return f"{scheme}{sep}***@{tail}" if at else url


def connect(url: str, *, timeout_s: float) -> Client:
    """The client for a store URL (nothing connects yet). ``redis://`` gets today's ``RespClient``."""
    topo = parse_url(url)
    if topo.kind == "single":
        return RespClient(url, timeout_s=timeout_s)
    if topo.kind == "sentinel":
        return RespClient(
            Endpoint(db=topo.db, username=topo.username, password=topo.password),
            timeout_s=timeout_s,
            locate=_SentinelLocator(topo, timeout_s),
        )
    from gateway.store.cluster import ClusterClient  # only loaded by deployments that use a cluster

    return ClusterClient(topo, timeout_s=timeout_s)


class _SentinelLocator:
    """``RespClient``'s ``locate``: the current primary's endpoint, asked of the Sentinels per dial."""

    def __init__(self, topo: Topology, timeout_s: float) -> None:
        from redis.asyncio.sentinel import Sentinel

        self._template = Endpoint(db=topo.db, username=topo.username, password=topo.password)
        self._master = topo.master
        timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        self._sentinel = Sentinel(list(topo.nodes), sentinel_kwargs=timeouts)

    async def __call__(self) -> Endpoint:
        from redis.exceptions import RedisError

        try:
            host, port = await self._sentinel.discover_master(self._master)
        except RedisError as exc:  # MasterNotFoundError: no Sentinel answered, or none knows a live primary
            raise ConnectionError(f"redis sentinel: {exc}") from exc
        return replace(self._template, host=str(host), port=int(port))

    async def close(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self._sentinel.sentinels), return_exceptions=True)
