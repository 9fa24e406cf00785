"""The shared-state store behind admission and settlement, and the contract both stores keep.

Admission reserves, for a key and its tenant together, in ONE atomic step (one Redis round-trip):

* one request in each scope's RPM window,
* the estimated tokens (prompt estimate + max output) in each scope's TPM window,
* the worst-case cost against each scope's budget for the current period.

It is admitted only if every limit holds for every scope: ``spent + reserved + this ≤ budget`` and
``window + this ≤ limit``. Nothing is recorded when it is refused. After the answer, ``settle`` adds
the actual cost to spent, corrects the TPM window by (actual − estimate) and releases the reservation.
Reservations carry a lease: one whose holder died is reaped by the next admission after it expires.

Both are idempotent, keyed by the request id, so a caller that lost a reply may simply send again:
``settle`` leaves a marker (kept ``DONE_TTL_S``) in the same atomic step, and a second settle of the
same id changes nothing and returns the spent totals as they are. A *release* (``Settlement.release``:
cost 0, no tokens) is the settlement of a request that was never served: it frees the reservation if
the admission ran, and its marker makes an admission of that id that runs later (sent on a stalled
connection before the caller gave up) record nothing: ``admit`` then raises ``AlreadySettledError``.

Money is integer nano-dollars (1e-9 USD), so stores add exactly; a request's cost is rounded up.
Windows are 60 one-second buckets: a count stays in the window from its second until 60 s after it,
which errs on the side of the limit (a sliding window never lets more than the limit through).
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

NANO = 1_000_000_000
DONE_TTL_S = 86_400
"""How long a settled (or released) request id is remembered. A re-send of a settlement counts once
as long as it runs within this time of the first copy that ran: a lost reply is re-sent as soon as
the store answers again, so only a store unreachable for longer than this could count one twice.
Cost: about 150 bytes of Redis memory per request settled in the last ``DONE_TTL_S`` (measured on
Redis 7.0: 100,000 markers took 15 MB)."""


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """One holder of limits: a tenant or a key. ``None`` = no such limit."""

    scope: str
    """``t`` for the tenant, ``k:<key id>`` for a key."""
    rpm: int | None = None
    tpm: int | None = None
    budget_nano: int | None = None
    period_start: int = 0
    """Start of the current budget period, unix seconds (UTC boundaries); 0 for ``total``."""


# Built per request, so plain slotted dataclasses: a frozen one costs about 1 µs more to build (each
# field goes through object.__setattr__). Nothing changes them once built.
@dataclass(slots=True)
class Ask:
    request_id: str
    tenant: str
    scopes: tuple[ScopeLimits, ...]
    """Usually (tenant, key)."""
    tokens: int
    cost_nano: int
    now: float
    lease_s: float


@dataclass(slots=True)
class ScopeState:
    """A scope's window after admission, for the x-ratelimit-* headers."""

    scope: str
    rpm_used: int = 0
    tpm_used: int = 0
    rpm_reset_s: float = 0.0
    tpm_reset_s: float = 0.0


@dataclass(slots=True)
class Admission:
    admitted: bool
    refused_by: Literal["rpm", "tpm", "budget"] | None = None
    refused_scope: str | None = None
    retry_after_s: float = 0.0
    """For rpm/tpm refusals: when enough of the window expires."""
    budget_left_nano: int = 0
    """For budget refusals: what the refused scope's budget has left for this period (budget − spent −
    reserved); ≤ 0 when it is spent, else the request's worst case was more than this."""
    states: tuple[ScopeState, ...] = field(default_factory=tuple)


@dataclass(slots=True)
class Settlement:
    request_id: str
    tenant: str
    scopes: tuple[ScopeLimits, ...]
    reserved_tokens: int
    tokens: int
    cost_nano: int
    now: float

    @classmethod
    def release(cls, ask: Ask, now: float) -> Settlement:
        """The settlement of a request that was never served: cost 0, its reserved tokens given back."""
        return cls(ask.request_id, ask.tenant, ask.scopes, ask.tokens, 0, 0, now)


@dataclass(frozen=True, slots=True)
class Spend:
    spent_nano: int
    reserved_nano: int


class CacheLookup(Protocol):
    """A cache read in flight: await it for the entry (or ``StoreUnavailableError``), or cancel it."""

    def __await__(self) -> Generator[Any, None, bytes | None]: ...

    def cancel(self) -> bool: ...


class StoreUnavailableError(Exception):
    """The store could not be reached in time; the caller applies ``store_failure``."""


class StoreUnreachableError(StoreUnavailableError):
    """Unavailable, and the call was never sent (no connection): it certainly did not run, so an
    admission that failed this way needs no release."""


class AlreadySettledError(StoreUnavailableError):
    """An admission of a request id that was already settled or released: nothing was recorded.
    Only a caller that gave up on the admission and released it can cause it, so nobody sees it but
    tests; it is a ``StoreUnavailableError`` so that a caller that did see it would not serve."""


class Store(Protocol):
    def admit(self, ask: Ask) -> Awaitable[Admission]:
        """Awaited for the answer; a store may send the request already when this is called."""
        ...

    async def settle(self, settlement: Settlement) -> dict[str, int]:
        """Record the actual cost (once per request id, however often called); return each scope's
        spent total (nano-USD) after it."""
        ...

    async def spend(self, tenant: str, scope: ScopeLimits) -> Spend: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
