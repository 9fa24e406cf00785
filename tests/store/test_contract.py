"""The store contract, run against MemoryStore and RedisStore alike (see the ``store`` fixture).

Time is the caller's ``now``: tests move it by hand. Values are chosen to be exact in binary
(``.5``, ``.25``) so that milliseconds derived from them are exact too.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from gateway.store import GatewayStore
from gateway.store.base import Admission, AlreadySettledError, Ask, ScopeLimits, Settlement

T0 = 1_700_000_000.0
DAY = 86_400
_ids = itertools.count()


def ask(
    *scopes: ScopeLimits,
    now: float = T0,
    tokens: int = 0,
    cost: int = 0,
    lease_s: float = 60.0,
    tenant: str = "acme",
    request_id: str | None = None,
) -> Ask:
    return Ask(
        request_id=request_id or f"req-{next(_ids)}",
        tenant=tenant,
        scopes=scopes,
        tokens=tokens,
        cost_nano=cost,
        now=now,
        lease_s=lease_s,
    )


def settle_of(
    a: Ask, *, tokens: int | None = None, cost: int | None = None, now: float | None = None
) -> Settlement:
    return Settlement(
        request_id=a.request_id,
        tenant=a.tenant,
        scopes=a.scopes,
        reserved_tokens=a.tokens,
        tokens=a.tokens if tokens is None else tokens,
        cost_nano=a.cost_nano if cost is None else cost,
        now=a.now if now is None else now,
    )


def state(admission: Admission, scope: str = "t") -> tuple[int, int]:
    s = next(s for s in admission.states if s.scope == scope)
    return s.rpm_used, s.tpm_used


# -- rate limits ------------------------------------------------------------------------------------------


async def test_rpm_admits_exactly_the_limit_then_says_when_to_retry(store: GatewayStore) -> None:
    t = ScopeLimits("t", rpm=5)
    for i in range(5):  # one request in each of the seconds T0 .. T0+4
        a = await store.admit(ask(t, now=T0 + i))
        assert a.admitted and state(a) == (i + 1, 0)
    refused = await store.admit(ask(t, now=T0 + 10.5))
    assert (refused.admitted, refused.refused_by, refused.refused_scope) == (False, "rpm", "t")
    assert refused.retry_after_s == pytest.approx(49.5)  # second T0 leaves the window at T0+60
    assert state(refused) == (5, 0)
    assert not (await store.admit(ask(t, now=T0 + 59.5))).admitted
    again = await store.admit(ask(t, now=T0 + 60))
    assert again.admitted and state(again) == (5, 0)


async def test_retry_after_counts_as_many_old_buckets_as_needed(store: GatewayStore) -> None:
    t = ScopeLimits("t", tpm=100)
    for i, tokens in enumerate((30, 30, 40)):
        assert (await store.admit(ask(t, now=T0 + i, tokens=tokens))).admitted
    refused = await store.admit(ask(t, now=T0 + 5, tokens=50))  # needs seconds T0 and T0+1 gone
    assert refused.refused_by == "tpm" and refused.retry_after_s == pytest.approx(56.0)
    never = await store.admit(ask(t, now=T0 + 5, tokens=101))  # more than the limit can ever hold
    assert (never.refused_by, never.retry_after_s) == ("tpm", 60.0)


async def test_reset_is_time_until_the_oldest_bucket_leaves(store: GatewayStore) -> None:
    t = ScopeLimits("t", rpm=10, tpm=1000)
    await store.admit(ask(t, now=T0 + 0.5, tokens=5))
    a = await store.admit(ask(t, now=T0 + 20.25, tokens=5))
    s = a.states[0]
    assert (s.rpm_used, s.tpm_used) == (2, 10)
    assert s.rpm_reset_s == pytest.approx(39.75) and s.tpm_reset_s == pytest.approx(39.75)


async def test_tpm_reserves_the_estimate_and_settle_corrects_it(store: GatewayStore) -> None:
    t = ScopeLimits("t", tpm=1000)
    first = ask(t, tokens=600)
    assert state(await store.admit(first)) == (0, 600)
    assert (await store.admit(ask(t, now=T0 + 1, tokens=600))).refused_by == "tpm"
    await store.settle(settle_of(first, tokens=200, now=T0 + 2))  # 400 over-reserved, given back
    second = ask(t, now=T0 + 3, tokens=600)
    assert state(await store.admit(second)) == (0, 800)
    await store.settle(settle_of(second, tokens=700, now=T0 + 4))  # 100 more than reserved
    assert (await store.admit(ask(t, now=T0 + 5, tokens=101))).refused_by == "tpm"  # 900 used
    assert state(await store.admit(ask(t, now=T0 + 5, tokens=100))) == (0, 1000)


async def test_tpm_give_back_never_goes_below_zero(store: GatewayStore) -> None:
    t = ScopeLimits("t", tpm=1000)
    a = ask(t, tokens=300)
    await store.admit(a)
    await store.settle(settle_of(a, tokens=0, now=T0 + 1))
    assert state(await store.admit(ask(t, now=T0 + 2, tokens=0))) == (0, 0)
    # a request that outlives the window: its reservation already left, nothing to give back
    late = ask(t, now=T0 + 10, tokens=500)
    await store.admit(late)
    await store.settle(settle_of(late, tokens=100, now=T0 + 75))
    assert state(await store.admit(ask(t, now=T0 + 76, tokens=1000))) == (0, 1000)


async def test_window_slides_after_sixty_seconds(store: GatewayStore) -> None:
    t = ScopeLimits("t", rpm=3, tpm=30)
    for _ in range(3):
        await store.admit(ask(t, tokens=10))
    assert not (await store.admit(ask(t, now=T0 + 59.5))).admitted
    later = await store.admit(ask(t, now=T0 + 61, tokens=10))
    assert later.admitted and state(later) == (1, 10)


async def test_when_rpm_and_tpm_both_refuse_the_later_retry_wins(store: GatewayStore) -> None:
    t = ScopeLimits("t", rpm=1, tpm=100)
    await store.admit(ask(t, now=T0, tokens=10))
    await store.admit(ask(ScopeLimits("t", tpm=100), now=T0 + 30, tokens=90))
    refused = await store.admit(ask(t, now=T0 + 40, tokens=50))
    # rpm frees up at T0+60, tpm needs T0+30 gone too: retry at T0+90
    assert refused.refused_by == "tpm" and refused.retry_after_s == pytest.approx(50.0)


# -- budgets ----------------------------------------------------------------------------------------------


async def test_budget_reserves_the_worst_case_and_settles_the_actual(store: GatewayStore) -> None:
    t = ScopeLimits("t", budget_nano=10_000)
    a, b = ask(t, cost=4_000), ask(t, cost=4_000)
    assert (await store.admit(a)).admitted and (await store.admit(b)).admitted
    refused = await store.admit(ask(t, cost=4_000))  # 0 + 8000 + 4000 > 10000
    assert (refused.admitted, refused.refused_by, refused.refused_scope, refused.retry_after_s) == (
        False,
        "budget",
        "t",
        0.0,
    )
    spend = await store.spend("acme", t, now=T0)
    assert (spend.spent_nano, spend.reserved_nano) == (0, 8_000)

    assert await store.settle(settle_of(a, cost=1_000)) == {"t": 1_000}
    spend = await store.spend("acme", t, now=T0)
    assert (spend.spent_nano, spend.reserved_nano) == (1_000, 4_000)
    assert (await store.admit(ask(t, cost=4_000))).admitted  # 1000 + 4000 + 4000 = 9000
    assert (await store.admit(ask(t, cost=1_000))).admitted  # exactly 10000
    assert (await store.admit(ask(t, cost=1))).refused_by == "budget"


async def test_a_budget_refusal_says_what_the_budget_has_left(store: GatewayStore) -> None:
    # The client is told why: a worst case larger than what is left (a smaller max_tokens would fit)
    # is not the same as a spent budget. What is left counts spent and reserved alike.
    t = ScopeLimits("t", budget_nano=10_000)
    key = ScopeLimits("k:one", budget_nano=2_000)
    refused = await store.admit(ask(t, key, cost=12_000))  # nothing spent yet
    assert (refused.refused_by, refused.refused_scope, refused.budget_left_nano) == ("budget", "t", 10_000)
    assert refused.retry_after_s == 0.0
    first = ask(t, cost=2_500)
    assert (await store.admit(first)).admitted
    await store.settle(settle_of(first, cost=2_000))
    assert (await store.admit(ask(t, cost=5_000))).admitted  # held, not spent
    refused = await store.admit(ask(t, key, cost=2_500))  # the tenant has 3000 left, the key 2000
    assert (refused.refused_scope, refused.budget_left_nano) == ("k:one", 2_000)
    refused = await store.admit(ask(t, cost=3_001))  # 10000 - 2000 spent - 5000 held
    assert (refused.refused_scope, refused.budget_left_nano) == ("t", 3_000)
    assert (await store.admit(ask(t, cost=3_000))).admitted
    spent = await store.admit(ask(ScopeLimits("t", rpm=0, budget_nano=10_000), cost=1))
    assert (spent.refused_by, spent.budget_left_nano, spent.retry_after_s) == ("budget", 0, 0.0)
    # a settlement over the reservation can leave less than nothing: said as it is
    over = ScopeLimits("t", budget_nano=1_000)
    a = ask(over, cost=1_000, tenant="globex")
    assert (await store.admit(a)).admitted
    await store.settle(settle_of(a, cost=1_500))
    assert (await store.admit(ask(over, cost=1, tenant="globex"))).budget_left_nano == -500


async def test_key_budget_inside_the_tenant_budget(store: GatewayStore) -> None:
    tenant = ScopeLimits("t", budget_nano=10_000)
    key1 = ScopeLimits("k:one", budget_nano=3_000)
    key2 = ScopeLimits("k:two")
    assert (await store.admit(ask(tenant, key1, cost=3_000))).admitted
    refused = await store.admit(ask(tenant, key1, cost=1))
    assert (refused.refused_by, refused.refused_scope) == ("budget", "k:one")
    assert (await store.admit(ask(tenant, key2, cost=7_000))).admitted  # the tenant's budget is shared
    refused = await store.admit(ask(tenant, key2, cost=1))
    assert (refused.refused_by, refused.refused_scope) == ("budget", "t")
    assert (await store.spend("acme", key2, now=T0)).reserved_nano == 7_000
    assert (await store.spend("acme", tenant, now=T0)).reserved_nano == 10_000


async def test_tenants_are_independent(store: GatewayStore) -> None:
    t = ScopeLimits("t", rpm=1, budget_nano=5)
    assert (await store.admit(ask(t, cost=5, tenant="acme"))).admitted
    assert (await store.admit(ask(t, cost=5, tenant="globex"))).admitted
    assert not (await store.admit(ask(t, tenant="acme"))).admitted


async def test_a_refusal_records_nothing(store: GatewayStore) -> None:
    tenant = ScopeLimits("t", rpm=100, tpm=1000, budget_nano=100)
    key = ScopeLimits("k:one", rpm=1)
    assert (await store.admit(ask(tenant, key, tokens=10, cost=10))).admitted
    assert (await store.admit(ask(tenant, key, tokens=10, cost=10))).refused_scope == "k:one"
    assert (await store.admit(ask(tenant, tokens=10, cost=1_000))).refused_by == "budget"
    probe = await store.admit(ask(tenant, tokens=10, cost=10))
    assert state(probe) == (2, 20)  # only the first request and this one
    assert (await store.spend("acme", tenant, now=T0)).reserved_nano == 20


async def test_a_spent_budget_is_reported_before_a_rate_limit(store: GatewayStore) -> None:
    t = ScopeLimits("t", rpm=1, budget_nano=10)
    assert (await store.admit(ask(t, cost=10))).admitted
    refused = await store.admit(ask(t, cost=1))
    assert (refused.refused_by, refused.retry_after_s) == ("budget", 0.0)


async def test_expired_leases_are_reaped(store: GatewayStore) -> None:
    t = ScopeLimits("t", budget_nano=1_000)
    dead = ask(t, cost=1_000, lease_s=1.0)
    assert (await store.admit(dead)).admitted
    assert (await store.admit(ask(t, now=T0 + 0.5, cost=1))).refused_by == "budget"
    assert (await store.spend("acme", t, now=T0 + 1)).reserved_nano == 1_000  # expiry is not yet past
    live = ask(t, now=T0 + 1.5, cost=600)
    assert (await store.admit(live)).admitted
    assert (await store.spend("acme", t, now=T0 + 1.5)).reserved_nano == 600
    # the holder comes back after all: its cost counts, but its reservation is not released twice
    assert await store.settle(settle_of(dead, cost=300, now=T0 + 2)) == {"t": 300}
    spend = await store.spend("acme", t, now=T0 + 2)
    assert (spend.spent_nano, spend.reserved_nano) == (300, 600)


async def test_settle_releases_once(store: GatewayStore) -> None:
    t = ScopeLimits("t", budget_nano=1_000)
    a, b = ask(t, cost=400), ask(t, cost=400)
    await store.admit(a)
    await store.admit(b)
    await store.settle(settle_of(a, cost=100))
    await store.settle(settle_of(a, cost=0))  # a duplicate must not release b's money
    assert (await store.spend("acme", t, now=T0)).reserved_nano == 400


async def test_a_reused_request_id_is_not_counted_twice(store: GatewayStore) -> None:
    t = ScopeLimits("t", budget_nano=1_000)
    await store.admit(ask(t, cost=400, request_id="same"))
    await store.admit(ask(t, cost=300, request_id="same"))
    assert (await store.spend("acme", t, now=T0)).reserved_nano == 300


async def test_a_new_period_starts_from_zero(store: GatewayStore) -> None:
    day1 = ScopeLimits("t", budget_nano=500, period_start=int(T0) - int(T0) % DAY)
    day2 = ScopeLimits("t", budget_nano=500, period_start=day1.period_start + DAY)
    a = ask(day1, cost=500)
    await store.admit(a)
    await store.settle(settle_of(a))
    assert (await store.admit(ask(day1, now=T0 + 1, cost=1))).refused_by == "budget"
    a2 = ask(day2, now=T0 + DAY, cost=500)
    assert (await store.admit(a2)).admitted
    assert await store.settle(settle_of(a2, cost=200)) == {"t": 200}
    assert (await store.spend("acme", day1, now=T0 + DAY)).spent_nano == 500
    assert (await store.spend("acme", day2, now=T0 + DAY)).spent_nano == 200


async def test_settle_returns_each_scopes_spent(store: GatewayStore) -> None:
    tenant, key = ScopeLimits("t", budget_nano=10**12), ScopeLimits("k:one")
    for cost in (5, 7):
        a = ask(tenant, key, cost=10)
        await store.admit(a)
        totals = await store.settle(settle_of(a, cost=cost))
    assert totals == {"t": 12, "k:one": 12}
    assert (await store.spend("acme", ScopeLimits("k:nobody"), now=T0)).spent_nano == 0
    assert (await store.spend("nobody", tenant, now=T0)).reserved_nano == 0


async def test_large_amounts_stay_exact(store: GatewayStore) -> None:
    # 2**53 nano is about 9 million USD: budgets below it compare exactly
    budget = 2**53 - 1
    t = ScopeLimits("t", budget_nano=budget)
    a = ask(t, cost=budget - 1)
    assert (await store.admit(a)).admitted
    assert (await store.admit(ask(t, cost=2))).refused_by == "budget"
    assert (await store.admit(ask(t, cost=1))).admitted
    assert await store.settle(settle_of(a)) == {"t": budget - 1}


# -- concurrency ------------------------------------------------------------------------------------------


async def test_concurrent_admits_never_pass_the_budget(store: GatewayStore) -> None:
    tenant = ScopeLimits("t", budget_nano=37 * 1_000, rpm=10_000)
    key = ScopeLimits("k:one", budget_nano=10**9)
    results = await asyncio.gather(*(store.admit(ask(tenant, key, cost=1_000)) for _ in range(200)))
    assert sum(r.admitted for r in results) == 37
    assert {r.refused_by for r in results if not r.admitted} == {"budget"}
    assert (await store.spend("acme", tenant, now=T0)).reserved_nano == 37_000
    assert max(state(r)[0] for r in results if r.admitted) == 37


# -- run-time keys ----------------------------------------------------------------------------------------


async def test_runtime_keys(store: GatewayStore) -> None:
    assert await store.keys_version() == 0
    await store.put_key("a" * 64, {"id": "k1", "tenant": "acme", "role": "user"})
    await store.put_key("b" * 64, {"id": "k2", "tenant": "globex", "role": "admin"})
    assert await store.keys_version() == 2
    assert [r["id"] for r in await store.list_keys()] == ["k1", "k2"]
    assert await store.list_keys("globex") == [{"id": "k2", "tenant": "globex", "role": "admin"}]
    await store.put_key("c" * 64, {"id": "k1", "tenant": "acme", "role": "user"})  # re-issued: new secret
    assert set(await store.all_keys()) == {"b" * 64, "c" * 64}
    assert await store.delete_key("k1") is True
    assert await store.delete_key("k1") is False
    assert await store.all_keys() == {"b" * 64: {"id": "k2", "tenant": "globex", "role": "admin"}}
    assert await store.keys_version() == 4
    with pytest.raises(ValueError):
        await store.put_key("d" * 64, {"tenant": "acme"})


async def test_ping(store: GatewayStore) -> None:
    assert await store.ping() is True


async def test_reset_moves_on_when_the_oldest_bucket_is_given_back(store: GatewayStore) -> None:
    t = ScopeLimits("t", tpm=1000)
    a = ask(t, now=T0, tokens=100)
    await store.admit(a)
    await store.admit(ask(t, now=T0 + 10, tokens=50))
    await store.settle(settle_of(a, tokens=0, now=T0 + 11))  # bucket T0 is empty now
    s = (await store.admit(ask(t, now=T0 + 12, tokens=0))).states[0]
    assert s.tpm_used == 50 and s.tpm_reset_s == pytest.approx(58.0)


# -- idempotent money operations (a lost reply is simply sent again) --------------------------------------


async def test_a_settlement_sent_twice_counts_once(store: GatewayStore) -> None:
    t = ScopeLimits("t", tpm=1_000, budget_nano=10_000)
    a = ask(t, tokens=600, cost=4_000)
    await store.admit(a)
    first = await store.settle(settle_of(a, tokens=200, cost=1_500, now=T0 + 1))
    # the re-send of a settlement whose reply was lost: the same totals back, nothing changes
    for _ in range(3):
        assert await store.settle(settle_of(a, tokens=200, cost=1_500, now=T0 + 2)) == first == {"t": 1_500}
    spend = await store.spend("acme", t, now=T0 + 2)
    assert (spend.spent_nano, spend.reserved_nano) == (1_500, 0)
    # the over-reserved tokens were given back once: 200 used, so 800 still fit and 801 do not
    assert (await store.admit(ask(t, now=T0 + 3, tokens=801))).refused_by == "tpm"
    assert (await store.admit(ask(t, now=T0 + 3, tokens=800))).admitted


async def test_a_settlement_without_a_reservation_counts_once(store: GatewayStore) -> None:
    """``store_failure: open``: served on a local admission, settled in the shared store later."""
    t = ScopeLimits("t", budget_nano=10_000)
    a = ask(t, cost=3_000)
    assert await store.settle(settle_of(a)) == {"t": 3_000}
    assert await store.settle(settle_of(a)) == {"t": 3_000}
    assert (await store.spend("acme", t, now=T0)).spent_nano == 3_000


async def test_a_release_frees_the_reservation_once(store: GatewayStore) -> None:
    t = ScopeLimits("t", tpm=1_000, budget_nano=1_000)
    a = ask(t, tokens=1_000, cost=1_000)
    assert (await store.admit(a)).admitted
    assert await store.settle(Settlement.release(a, now=T0 + 1)) == {"t": 0}
    assert await store.settle(Settlement.release(a, now=T0 + 1)) == {"t": 0}
    spend = await store.spend("acme", t, now=T0 + 1)
    assert (spend.spent_nano, spend.reserved_nano) == (0, 0)
    assert (await store.admit(ask(t, now=T0 + 2, tokens=1_000, cost=1_000))).admitted  # all given back
    # a settlement arriving after the release (it was sent first, on a stalled connection) adds nothing
    assert await store.settle(settle_of(a, cost=700)) == {"t": 0}


async def test_an_admission_after_its_release_records_nothing(store: GatewayStore) -> None:
    """The admission was sent on a connection that stalled; its caller gave up, answered 503 and
    released the id on another connection, which Redis happened to run first."""
    t = ScopeLimits("t", rpm=1, tpm=100, budget_nano=1_000)
    late = ask(t, tokens=100, cost=1_000)
    await store.settle(Settlement.release(late, now=T0))
    with pytest.raises(AlreadySettledError):
        await store.admit(late)
    spend = await store.spend("acme", t, now=T0)
    assert (spend.spent_nano, spend.reserved_nano) == (0, 0)
    # nothing was counted in the windows either: the one request of the minute still fits
    assert (await store.admit(ask(t, tokens=100, cost=1_000))).admitted
