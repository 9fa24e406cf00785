"""The shared store: admission and settlement as Lua scripts in Redis, one round-trip each.

Key layout (``{T}`` is the tenant as a Redis Cluster hash tag, so one script call stays in one slot)::

    gw:{T}:res                    HASH   r:<request id> → "<admit second> <cost nano> <scope> …"
                                         s:<scope>      → reserved nano (sum of live reservations)
    gw:{T}:lease                  ZSET   request id scored by lease expiry (unix ms)
    gw:{T}:rpm:<scope>            HASH   <unix second> → requests;  n → sum;  lo → oldest second
    gw:{T}:tpm:<scope>            HASH   <unix second> → tokens;    n → sum;  lo → oldest second
    gw:{T}:spent:<scope>:<start>  STRING spent nano in the budget period starting at <start>
    gw:{T}:done:<request id>      STRING settled marker (the cost settled; 0 for a release)
    gw:{T}:cache:<sha256>         STRING a cached answer (gateway/pipeline/cache.py), TTL per route
    gw:{admin}:keys               HASH   sha256 → run-time key record (JSON)
    gw:{admin}:key-ids            HASH   key id → sha256
    gw:{admin}:keys-version       STRING bumped on every key change

TTLs: windows 120 s, renewed by the first write of each second; ``res`` and ``lease`` together, to
the longest live lease + 60..120 s, never shortened; a period's spent until 32 days after the
period starts (the longest period plus a day), a ``total`` budget's spent (start 0) forever; a
settled marker ``DONE_TTL_S`` (a day); the admin keys forever. Scope names are ``t`` and
``k:<key id>``; tenant and key ids must follow the config's name rule (letters, digits, ``.``,
``_``, ``-``), which keeps the hash tag and the space-separated reservation record intact.
lib.lua explains the window bookkeeping.

Time is the caller's ``now``, not Redis ``TIME``, so tests can drive the clock. That is safe enough
across replicas: NTP-synced hosts disagree by milliseconds, windows are seconds wide and leases a
minute or more, so a skewed replica at worst counts a request into the neighbouring second. TTLs are
set relative to the caller's clock too. Money is integer nano-USD; Lua compares it as doubles, which
is exact up to 2**53 nano (about 9 million USD per budget).

One round-trip per admit and per settle, through the lean pipelined client in ``resp.py`` (one
connection, commands of the same event-loop turn written together). Every call has one deadline,
``timeout_s`` for the reply, plus one more for a connect when a call has to dial. This module retries
nothing itself: a call that times out may still have run on the server (or run later, when a
stalled server wakes and reads it). Both money operations are idempotent by request id (see
``base``), so the caller recovers: the settler (``gateway/pipeline/spend.py``) re-sends a settlement
until one copy is acknowledged, and releases an admission whose reply was lost; the ``done`` marker
makes every later copy a no-op, and makes a late admission of a released id record nothing.
Connection errors, timeouts, OSErrors and every error reply (READONLY from a failed-over primary,
MOVED from a cluster node named by a plain URL, LOADING, BUSY, CLUSTERDOWN, TRYAGAIN, MASTERDOWN,
...) become ``StoreUnavailableError`` here and nowhere else, so ``store_failure`` decides, never a
500. The URL picks the client (``topology.py``): one server, the Sentinels' primary, or a cluster;
under Sentinel a settlement is acknowledged only once a replica has it (``replicated.py``).
After a Redis restart the scripts reload by themselves (EVALSHA, then SCRIPT LOAD on NOSCRIPT:
NOSCRIPT means the script did not run).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from importlib.resources import files
from typing import Any, Literal, TypeVar

import orjson

from gateway.store.base import (
    DONE_TTL_S,
    Admission,
    AlreadySettledError,
    Ask,
    ScopeLimits,
    ScopeState,
    Settlement,
    Spend,
    StoreUnavailableError,
    StoreUnreachableError,
)
from gateway.store.memory import SPENT_RETENTION_S, key_id_of
from gateway.store.replicated import Replicated
from gateway.store.resp import NotSentError, ReplyError, Script, is_noscript
from gateway.store.topology import Client, connect, parse_url

T = TypeVar("T")

_KINDS: tuple[Literal["rpm", "tpm", "budget"], ...] = ("rpm", "tpm", "budget")
_LEASE_KEY_MARGIN_S = 60
"""The reservation keys outlive the longest lease by this much."""


def _lua(name: str) -> str:
    return files("gateway.store").joinpath(name).read_text(encoding="utf-8")


_RIDING_PUT_BYTES = 1024
"""Cache entries up to this size ride ahead in the next write (measured: a ~4 KB stream entry riding
ahead of the next admission added ~40 µs to that request's time to first event)."""


def _down(exc: OSError) -> StoreUnavailableError:
    """ConnectionError, and the builtin TimeoutError of a call's deadline: the store is unavailable
    (``StoreUnreachableError`` when the call was never sent)."""
    if isinstance(exc, NotSentError):
        return StoreUnreachableError(f"redis unavailable (nothing sent): {exc!r}")
    return StoreUnavailableError(f"redis unavailable: {exc!r}")


def _put_outcome(done: asyncio.Future[None], replies: asyncio.Future[list[Any]]) -> None:
    """A write's replies as ``cache_put``'s outcome, Redis failures made ``StoreUnavailableError``."""
    if done.done():
        return
    if replies.cancelled():
        done.cancel()
        return
    exc = replies.exception()
    if isinstance(exc, OSError):  # ConnectionError, and the builtin TimeoutError of the deadline
        done.set_exception(_down(exc))
    elif exc is not None:
        done.set_exception(exc)
    elif isinstance(reply := replies.result()[0], ReplyError):
        done.set_exception(StoreUnavailableError(f"redis refused the write: {reply}"))
    else:
        done.set_result(None)


_PASSING_REPLIES = ("LOADING", "BUSY", "MASTERDOWN")
"""Error replies of a server that will answer again soon, the command not run: a restarted server
reading its AOF or RDB, a script running too long, a replica cut off from its primary."""


def _unavailable(exc: OSError | ReplyError) -> StoreUnavailableError:
    """What a failed call means for the gateway: the store is unavailable, whatever Redis said.

    An error reply is never the request's fault: READONLY (a failed-over primary that became a
    replica), MOVED/ASK (a cluster node named by a plain URL, or a redirect not followed), LOADING,
    BUSY (a script or DEBUG SLEEP holds the server), CLUSTERDOWN, TRYAGAIN, MASTERDOWN, NOREPLICAS,
    OOM, or a script error. ``store_failure`` decides what the request gets; the text says why."""
    if isinstance(exc, OSError):
        return _down(exc)
    text = str(exc)
    if text.startswith("READONLY"):
        return StoreUnavailableError(f"redis is read-only: {exc}")
    if text.startswith(_PASSING_REPLIES):
        return StoreUnavailableError(f"redis is not serving yet: {exc}")
    return StoreUnavailableError(f"redis refused: {exc}")


async def _raising(exc: Exception) -> Any:
    raise exc


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """The store shared by every replica; see the module docstring for the key layout."""

    def __init__(
        self, url: str, *, timeout_s: float = 0.25, prefix: str = "gw", linger_s: float = 0.002
    ) -> None:
        self._redis = connect(url, timeout_s=timeout_s)
        # Sentinel: a settlement is acknowledged only once a replica has it (``replicated.py``).
        self._replicated = (
            Replicated(connect(url, timeout_s=timeout_s), wait_ms=max(int(timeout_s * 1000 / 3), 1))
            if parse_url(url).kind == "sentinel"
            else None
        )
        # Settlements and cache puts run after the response and nobody waits on them: they may wait
        # this long to share the next admission's write (one syscall less per request under load).
        self._linger_s = linger_s
        self._timeout_s = timeout_s
        self._prefix = prefix
        lib = _lua("lib.lua")
        self._admit = Script(lib + _lua("admit.lua"))
        self._spend = Script(lib + _lua("spend.lua"))
        self._settle = Script(lib + _lua("settle.lua"))
        self._keys = Script(_lua("keys.lua"))
        admin = f"{prefix}:{{admin}}"
        self._key_names = [f"{admin}:keys", f"{admin}:key-ids", f"{admin}:keys-version"]

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run a call, its Redis failures made ``StoreUnavailableError`` (``_unavailable``)."""
        try:
            return await make()
        except (OSError, ReplyError) as exc:
            raise self._refused(exc) from exc

    def _refused(self, exc: OSError | ReplyError, client: Client | None = None) -> StoreUnavailableError:
        """``_unavailable``, and a server that said READONLY is left: it is no primary any more, so
        the next call dials again (with Sentinel, the new primary)."""
        if isinstance(exc, ReplyError) and str(exc).startswith("READONLY"):
            (client or self._redis).drop()
        return _unavailable(exc)

    async def _confirmed(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        """Run a settlement through ``replicated.py``: acknowledged once a replica has it; until
        then unavailable, so the settler re-sends it (idempotent: it counts once)."""
        assert self._replicated is not None
        command = script.command(keys, args)
        client = self._replicated.client
        try:
            reply = await self._replicated.run(command)
            if is_noscript(reply):  # it did not run: load the script, and run it again
                await client.execute("SCRIPT", "LOAD", script.source)
                reply = await self._replicated.run(command)
        except (OSError, ReplyError) as exc:
            raise self._refused(exc, client) from exc
        if isinstance(reply, ReplyError):
            raise self._refused(reply, client) from reply
        return reply

    def _script(
        self,
        script: Script,
        keys: list[str],
        args: list[str | int],
        *,
        linger_s: float = 0.0,
        eager: bool = False,
    ) -> Awaitable[Any]:
        """``_call(lambda: script.call(...))`` in one frame instead of three, for the per-request
        scripts. The command is queued (with ``eager``, written) when this is called, not when the
        result is awaited; the reply is awaited in one frame, and only a NOSCRIPT (a restarted Redis)
        or an error reply takes the long way (load the script, run it again; map the error)."""
        try:
            replies = self._redis.submit([script.command(keys, args)], linger_s=linger_s, eager=eager)
        except OSError as exc:
            return _raising(_down(exc))
        return self._script_reply(replies, script, keys, args)

    async def _script_reply(
        self, replies: Awaitable[list[Any]], script: Script, keys: list[str], args: list[str | int]
    ) -> Any:
        try:
            (reply,) = await replies
        except OSError as exc:
            raise _down(exc) from exc
        if isinstance(reply, ReplyError):
            if is_noscript(reply):
                return await self._call(lambda: script.call(self._redis, keys, args))
            raise self._refused(reply) from reply
        return reply

    def _tenant_keys(self, tenant: str) -> tuple[str, list[str]]:
        base = f"{self._prefix}:{{{tenant}}}"
        return base, [f"{base}:res", f"{base}:lease"]

    def _money_keys(self, tenant: str, request_id: str) -> tuple[str, list[str]]:
        """The tenant's reservation keys and the request's settled marker (one hash slot)."""
        base = f"{self._prefix}:{{{tenant}}}"
        return base, [f"{base}:res", f"{base}:lease", f"{base}:done:{request_id}"]

    # -- admission ----------------------------------------------------------------------------------------

    def admit(self, ask: Ask) -> Awaitable[Admission]:
        """Sent when called (written at once unless replies are awaited); the answer when awaited."""
        if ask.tokens < 0 or ask.cost_nano < 0:
            raise ValueError("tokens and cost_nano must not be negative")
        now_ms = int(ask.now * 1000)
        base, keys = self._money_keys(ask.tenant, ask.request_id)
        args: list[str | int] = [
            now_ms,
            now_ms + int(ask.lease_s * 1000),
            math.ceil(ask.lease_s) + _LEASE_KEY_MARGIN_S,
            ask.request_id,
            ask.tokens,
            ask.cost_nano,
        ]
        for s in ask.scopes:
            keys += [
                f"{base}:rpm:{s.scope}",
                f"{base}:tpm:{s.scope}",
                f"{base}:spent:{s.scope}:{s.period_start}",
            ]
            args += [s.scope, _limit(s.rpm), _limit(s.tpm), _limit(s.budget_nano)]
        # eager: written now, with the cache lookup queued before it, unless replies are awaited (then
        # it joins this turn's write, pipelined with the other requests of the turn)
        return self._admission(self._script(self._admit, keys, args, eager=True), ask)

    async def _admission(self, reply: Awaitable[list[int]], ask: Ask) -> Admission:
        raw = await reply
        if raw[1] == 4:
            raise AlreadySettledError(f"request {ask.request_id} was already settled or released")
        states = tuple(
            ScopeState(
                scope=s.scope,
                rpm_used=raw[4 + 4 * i],
                tpm_used=raw[5 + 4 * i],
                rpm_reset_s=raw[6 + 4 * i] / 1000,
                tpm_reset_s=raw[7 + 4 * i] / 1000,
            )
            for i, s in enumerate(ask.scopes)
        )
        if raw[0] == 1:
            return Admission(admitted=True, states=states)
        budget = raw[1] == 3  # then the 4th integer is what the budget has left, not a wait
        return Admission(
            admitted=False,
            refused_by=_KINDS[raw[1] - 1],
            refused_scope=ask.scopes[raw[2] - 1].scope,
            retry_after_s=0.0 if budget else raw[3] / 1000,
            budget_left_nano=raw[3] if budget else 0,
            states=states,
        )

    # -- settlement -----------------------------------------------------------------------------------------

    async def settle(self, settlement: Settlement) -> dict[str, int]:
        """Release the reservation, add the cost, correct the TPM windows: once per request id, however
        often it is called (a marker is left; see ``base``). Safe to re-send after a lost reply."""
        st = settlement
        if st.cost_nano < 0:
            raise ValueError("cost_nano must not be negative")
        base, keys = self._money_keys(st.tenant, st.request_id)
        args: list[str | int] = [
            int(st.now * 1000),
            st.request_id,
            st.tokens - st.reserved_tokens,
            st.cost_nano,
            DONE_TTL_S,
        ]
        for s in st.scopes:
            keys += [f"{base}:tpm:{s.scope}", f"{base}:spent:{s.scope}:{s.period_start}"]
            # relative to the caller's clock, like everything else here (see the module docstring)
            ttl = max(s.period_start + SPENT_RETENTION_S - int(st.now), 60) if s.period_start else 0
            args += [s.scope, 0 if s.tpm is None else 1, ttl]
        raw: list[int]
        if self._replicated is None:
            raw = await self._script(self._settle, keys, args, linger_s=self._linger_s)
        else:
            raw = await self._confirmed(self._settle, keys, args)
        return {s.scope: spent for s, spent in zip(st.scopes, raw, strict=True)}

    async def spend(self, tenant: str, scope: ScopeLimits, now: float | None = None) -> Spend:
        """``now`` (default: the wall clock) decides which leases have expired and are reaped first."""
        base, keys = self._tenant_keys(tenant)
        keys.append(f"{base}:spent:{scope.scope}:{scope.period_start}")
        now_ms = int((time.time() if now is None else now) * 1000)
        raw: list[bytes] = await self._call(
            lambda: self._spend.call(self._redis, keys, [now_ms, scope.scope])
        )
        return Spend(spent_nano=int(raw[0]), reserved_nano=int(raw[1]))

    async def ping(self) -> bool:
        # Twice: the first try may only discover that a pooled connection died with an old server.
        for _ in range(2):
            try:
                return bool(await self._call(lambda: self._redis.execute("PING")))
            except StoreUnavailableError:
                continue
        return False

    async def close(self) -> None:
        await self._redis.close()
        if self._replicated is not None:
            await self._replicated.close()

    async def eviction_policy(self) -> str | None:
        """The server's ``maxmemory-policy``, or None when it will not say (managed Redis often
        disables CONFIG) or cannot be reached. Asked once, at start-up: the money store must be
        ``noeviction``, since an evicted budget or reservation silently resets a limit."""
        try:
            reply = await self._call(lambda: self._redis.execute("CONFIG", "GET", "maxmemory-policy"))
        except StoreUnavailableError:
            return None
        values = [_text(v) for v in reply]
        return values[values.index("maxmemory-policy") + 1] if "maxmemory-policy" in values else None

    async def command(self, *args: str | bytes | int) -> Any:
        """One plain command (GET/SET/DEL …) through the store's client, whatever the topology
        (Sentinel follows the primary, Cluster routes by the key's slot); failures are
        ``StoreUnavailableError``. For data beside the money (stored responses), off the hot path."""
        return await self._call(lambda: self._redis.execute(*args))

    # -- response cache ------------------------------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call(lambda: self._redis.execute("GET", key))
        return value

    def cache_lookup(self, key: str) -> _Lookup:
        return _Lookup(self._redis.submit([("GET", key)]))

    def cache_put(self, key: str, value: bytes, ttl_s: int) -> asyncio.Future[None]:
        """Sent so that the next lookup of this replica, however quick, finds it: a small entry goes
        first in the connection's next write (within ``linger_s``), saving a write of its own; a larger
        one is written at once, so that the next admission does not wait while Redis stores it. The
        future is done once Redis answered: None, or ``StoreUnavailableError``."""
        command = ("SET", key, value, "EX", ttl_s)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        small = len(value) <= _RIDING_PUT_BYTES
        try:
            if small:
                replies = self._redis.submit([command], linger_s=self._linger_s, ahead=True)
            else:
                replies = self._redis.submit([command], now=True)
        except OSError as exc:  # never raised past here: a put must not stop the settlement after it
            done.set_exception(_down(exc))
            return done
        replies.add_done_callback(functools.partial(_put_outcome, done))
        return done

    # -- run-time keys (admin API, off the hot path) --------------------------------------------------------

    async def put_key(self, sha256: str, record: Mapping[str, Any]) -> None:
        """Store a key record under its sha256; re-using a key id replaces that id's old secret."""
        args = ["put", sha256, key_id_of(record), orjson.dumps(dict(record)).decode()]
        await self._call(lambda: self._keys.call(self._redis, self._key_names, args))

    async def delete_key(self, key_id: str) -> bool:
        deleted = await self._call(lambda: self._keys.call(self._redis, self._key_names, ["delete", key_id]))
        return bool(deleted)

    async def list_keys(self, tenant: str | None = None) -> list[dict[str, Any]]:
        raw: list[bytes] = await self._call(lambda: self._redis.execute("HVALS", self._key_names[0]))
        records = (orjson.loads(v) for v in raw)
        return sorted(
            (r for r in records if tenant is None or r.get("tenant") == tenant), key=lambda r: str(r["id"])
        )

    async def keys_version(self) -> int:
        return int(await self._call(lambda: self._redis.execute("GET", self._key_names[2])) or 0)

    async def all_keys(self) -> dict[str, dict[str, Any]]:
        raw: list[bytes] = await self._call(lambda: self._redis.execute("HGETALL", self._key_names[0]))
        return {_text(sha): orjson.loads(record) for sha, record in zip(raw[::2], raw[1::2], strict=True)}


class _Lookup:
    """A GET in flight (see ``GatewayStore.cache_lookup``), with this module's error boundary."""

    __slots__ = ("_replies",)

    def __init__(self, replies: asyncio.Future[list[Any]]) -> None:
        self._replies = replies

    def __await__(self) -> Generator[Any, None, bytes | None]:
        try:
            (reply,) = yield from self._replies.__await__()
        except OSError as exc:
            raise _down(exc) from exc
        if isinstance(reply, ReplyError):
            raise _unavailable(reply) from reply
        value: bytes | None = reply
        return value

    def cancel(self) -> bool:
        return self._replies.cancel()
