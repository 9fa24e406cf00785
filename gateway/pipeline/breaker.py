"""Circuit breakers, one per deployment, with their state shared by every replica through Redis.

The state machine is pybreaker's: *closed* until ``failures`` consecutive failures, then *open* (the
deployment is skipped) for ``reset_s``, then *half-open*: one probe request goes through, and its
success closes the circuit while its failure opens it again. pybreaker's own ``call_async`` needs
tornado and its ``CircuitRedisStorage`` uses the synchronous Redis client, which would block the event
loop, so neither is used: dispatch asks ``allow()`` before a call and hands the outcome to
``record()`` after it, and pybreaker's state machine is driven from there.

What counts as a failure: what the retry layer gave up on for a reason the deployment owns — 5xx,
timeouts, connection errors and resets, malformed bodies. Not a 429 (the deployment is up but busy,
and its ``retry-after`` already steers the retries), and not any other 4xx (the request's fault);
those count as a success, a 429 counts as neither. Each replica lets one half-open probe through at a
time.

Sharing, with nothing blocking on the request path: each breaker's local view (a pybreaker storage
in memory) answers ``allow()``. Outcomes change the local view at once and are queued; one background
task per registry sends the queue to Redis (one Lua call per deployment, all in one pipeline), where
the shared record lives, and reads back every known deployment's record every ``interval_s``::

    gw:{breaker}:<deployment>   HASH   state (closed|open), failures, opened_at (unix seconds)

The Lua script applies the same state machine to the shared record, so failures seen by different
replicas add up, and a replica's local view follows the shared record within one interval. Redis
stores no *half-open*: an open record past its ``reset_s`` is half-open for every replica. Without
Redis (one process, ``MemoryStore``) the breakers are in-process only and the task just keeps the
gauge current. When Redis is unreachable each replica goes on with its local view.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pybreaker
from prometheus_client import Gauge

from gateway.config.model import BreakerPolicy
from gateway.store.resp import Command, ReplyError, Script
from gateway.store.topology import Client, connect

log = logging.getLogger("gateway.breaker")

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN
GAUGE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
"""``gateway_circuit_state``: 0 closed, 1 half-open, 2 open."""
MAX_QUEUED = 64
"""Outcomes kept per deployment while Redis is unreachable (the latest; enough to open any circuit)."""

# Applies queued outcomes ('f' failure, 's' success) to the shared record, in order, with the state
# machine of the module docstring; returns the record after them.
_RECORD_LUA = """
local now, fail_max, reset_s = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'opened_at')
local state, failures, opened = h[1] or 'closed', tonumber(h[2] or '0'), tonumber(h[3] or '0')
for i = 5, #ARGV do
  local half = state == 'open' and now >= opened + reset_s
  if ARGV[i] == 'f' then
    if half then
      opened = now
    elseif state == 'closed' then
      failures = failures + 1
      if failures >= fail_max then state, opened, failures = 'open', now, 0 end
    end
  elseif state == 'closed' or half then
    state, failures = 'closed', 0
  end
end
redis.call('HSET', KEYS[1], 'state', state, 'failures', failures, 'opened_at', tostring(opened))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {state, failures, tostring(opened)}
"""


class Outcome(enum.Enum):
    SUCCESS = "s"
    FAILURE = "f"
    NEUTRAL = ""
    """Says nothing about the deployment's health (a 429, a cancelled call)."""


class BreakerOpen(pybreaker.CircuitBreakerError):
    """The deployment's circuit is open (or its one half-open probe is in flight): skip it."""

    def __init__(self, deployment: str, reopen_in_s: float) -> None:
        super().__init__(f"circuit open for deployment '{deployment}'")
        self.deployment = deployment
        self.reopen_in_s = reopen_in_s


class _ReplayedFailure(Exception):
    """Stands for a failed upstream call when its outcome is replayed through pybreaker."""


def _succeed() -> None:
    return None


def _fail() -> None:
    raise _ReplayedFailure


def _ts(dt: datetime | None) -> float:
    return dt.timestamp() if dt is not None else 0.0


class LocalView(pybreaker.CircuitBreakerStorage):
    """pybreaker's storage: this replica's view of one breaker, in memory, overwritten from Redis."""

    def __init__(self) -> None:
        super().__init__("local")
        self._state = CLOSED
        self._failures = 0
        self._successes = 0
        self._opened_at: datetime | None = None

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = state

    def increment_counter(self) -> None:
        self._failures += 1

    def reset_counter(self) -> None:
        self._failures = 0

    def increment_success_counter(self) -> None:
        self._successes += 1

    def reset_success_counter(self) -> None:
        self._successes = 0

    @property
    def counter(self) -> int:
        return self._failures

    @property
    def success_counter(self) -> int:
        return self._successes

    @property
    def opened_at(self) -> datetime | None:
        return self._opened_at

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._opened_at = value

    def load(self, state: str, failures: int, opened_at: float) -> None:
        """Take the shared record. It knows no half-open: ``DeploymentBreaker.state`` computes that
        from ``opened_at`` when it is next read."""
        self._state = OPEN if state == OPEN else CLOSED
        self._failures = failures
        self._opened_at = datetime.fromtimestamp(opened_at, UTC) if opened_at else None


class _GaugeListener(pybreaker.CircuitBreakerListener):
    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        self._gauge.set(GAUGE_VALUES[new_state.name])


class DeploymentBreaker:
    """One deployment's breaker, as dispatch sees it: ``allow()`` before, ``record()`` after."""

    def __init__(self, name: str, policy: BreakerPolicy, gauge: Gauge, registry: BreakerRegistry) -> None:
        self.name = name
        self.view = LocalView()
        child = gauge.labels(name)
        child.set(0)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=policy.failures,
            reset_timeout=policy.reset_s,
            state_storage=self.view,
            listeners=[_GaugeListener(child)],
            name=name,
            throw_new_error_on_trip=False,  # keep the upstream's error; dispatch maps it
        )
        self._registry = registry
        self._probing = False

    @property
    def policy(self) -> BreakerPolicy:
        return BreakerPolicy(failures=self._cb.fail_max, reset_s=self._cb.reset_timeout)

    def configure(self, policy: BreakerPolicy) -> None:
        """Follow a reloaded routes.yaml."""
        self._cb.fail_max = policy.failures
        self._cb.reset_timeout = policy.reset_s

    @property
    def state(self) -> str:
        """closed | open | half-open, moving an open circuit past its ``reset_s`` to half-open."""
        cb = self._cb
        if cb.current_state == OPEN and self.reopen_in() <= 0:
            cb.half_open()
        return str(cb.state.name)  # reading ``cb.state`` tells the listeners about remote changes

    def refresh(self) -> None:
        """Bring pybreaker (and so the gauge) up to date with the local view."""
        self.state  # noqa: B018 - reading it is what moves the state machine

    def reopen_in(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when it is not open)."""
        if self.view.state != OPEN:
            return 0.0
        return max(_ts(self.view.opened_at) + self._cb.reset_timeout - time.time(), 0.0)

    def allow(self) -> bool:
        """Before a call: raise ``BreakerOpen`` to skip the deployment; True when this call is the probe."""
        state = self.state
        if state == CLOSED:
            return False
        if state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        raise BreakerOpen(self.name, self.reopen_in())

    def record(self, outcome: Outcome, probe: bool) -> None:
        """After a call: update the local view now and queue the outcome for the shared record."""
        if probe:
            self._probing = False
        if outcome is Outcome.NEUTRAL:
            return
        if outcome is Outcome.SUCCESS and self.view.state == CLOSED and self.view.counter == 0:
            return  # nothing to reset: a healthy deployment costs Redis nothing per request
        try:
            self._cb.call(_fail if outcome is Outcome.FAILURE else _succeed)
        except _ReplayedFailure:
            log.debug("breaker %s: failure %d recorded", self.name, self.view.counter)
        except pybreaker.CircuitBreakerError:
            # Opened meanwhile (by another request or replica): the late outcome of a call that
            # started before then says nothing new.
            log.debug("breaker %s: outcome ignored, circuit open", self.name)
        self._registry.queue(self.name, outcome)


class BreakerRegistry:
    """Every deployment's breaker; lives as long as the app (config reloads keep the state)."""

    def __init__(
        self,
        gauge: Gauge,
        redis_url: str | None = None,
        *,
        interval_s: float = 0.5,
        timeout_s: float = 0.5,
        prefix: str = "gw",
    ) -> None:
        self._gauge = gauge
        self._breakers: dict[str, DeploymentBreaker] = {}
        self._pending: dict[str, list[str]] = {}
        self._wake = asyncio.Event()
        self._interval_s = interval_s
        self._prefix = f"{prefix}:{{breaker}}:"
        self._redis = connect(redis_url, timeout_s=timeout_s) if redis_url else None
        self._script = Script(_RECORD_LUA)
        self._warned = False

    @property
    def shared(self) -> bool:
        return self._redis is not None

    def get(self, deployment: str, policy: BreakerPolicy) -> DeploymentBreaker:
        breaker = self._breakers.get(deployment)
        if breaker is None:
            breaker = self._breakers[deployment] = DeploymentBreaker(deployment, policy, self._gauge, self)
            self._wake.set()  # fetch its shared record now rather than at the next poll
        elif breaker.policy is not policy and breaker.policy != policy:
            breaker.configure(policy)
        return breaker

    def queue(self, deployment: str, outcome: Outcome) -> None:
        if self._redis is None:
            return
        queued = self._pending.setdefault(deployment, [])
        queued.append(outcome.value)
        del queued[:-MAX_QUEUED]
        self._wake.set()

    async def run(self) -> None:
        """The background task: publish queued outcomes, refresh the local views, keep the gauge."""
        while True:
            with contextlib.suppress(TimeoutError):  # the poll interval passed with nothing queued
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            await self.sync()

    async def sync(self) -> None:
        """One round: send what is queued, then read every known record (one pipeline, one round-trip)."""
        if self._redis is not None:
            try:
                await self._exchange(self._redis)
                self._warned = False
            except (ReplyError, OSError) as exc:  # OSError covers the builtin TimeoutError too
                if not self._warned:
                    log.warning("circuit breakers: redis unreachable, using local state: %r", exc)
                    self._warned = True
        for breaker in list(self._breakers.values()):
            breaker.refresh()

    async def _exchange(self, redis: Client) -> None:
        pending, self._pending = self._pending, {}
        names = list(self._breakers)
        now = time.time()
        commands: list[Command] = []
        for name, outcomes in pending.items():
            policy = self._breakers[name].policy
            ttl = max(3600, math.ceil(policy.reset_s * 4))
            args: list[str | int | float] = [now, policy.failures, policy.reset_s, ttl, *outcomes]
            commands.append(self._script.command([self._prefix + name], args))
        for name in names:
            commands.append(("HMGET", self._prefix + name, "state", "failures", "opened_at"))
        try:
            replies = await self._script.run(redis, commands)
            if failed := next((r for r in replies if isinstance(r, ReplyError)), None):
                raise failed
        except Exception:
            self._requeue(pending)
            raise
        written = dict(zip(pending, replies[: len(pending)], strict=True))
        for name, record in written.items():
            self._load(name, record)
        for name, record in zip(names, replies[len(pending) :], strict=True):
            # A record written above is newer than one read in the same pipeline only if it changed
            # since; skip those, and those with outcomes queued during the round-trip.
            if name not in written and name not in self._pending and record[0] is not None:
                self._load(name, record)

    def _requeue(self, pending: dict[str, list[str]]) -> None:
        for name, outcomes in pending.items():
            self._pending[name] = (outcomes + self._pending.get(name, []))[-MAX_QUEUED:]

    def _load(self, name: str, record: Iterable[Any]) -> None:
        state, failures, opened = (v.decode() if isinstance(v, bytes) else v for v in record)
        self._breakers[name].view.load(str(state or CLOSED), int(failures or 0), float(opened or 0))

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()
