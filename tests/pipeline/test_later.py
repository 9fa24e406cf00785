"""gateway/pipeline/later.py: after-answer bookkeeping waits for the next request's upstream call."""

from __future__ import annotations

import asyncio

from gateway.pipeline.later import Later


async def test_work_waits_for_a_request_and_runs_after_what_that_turn_queued() -> None:
    later = Later(max_delay_s=10.0)
    order: list[str] = []

    async def bookkeeping() -> None:
        await later.turn()
        order.append("bookkeeping")

    job = asyncio.create_task(bookkeeping())
    await asyncio.sleep(0.02)
    assert order == []  # no request yet, and the fallback is far away
    later.request_waits()
    asyncio.get_running_loop().call_soon(order.append, "upstream write")  # queued later in that turn
    await job
    assert order == ["upstream write", "bookkeeping"]


async def test_without_requests_work_runs_after_the_delay() -> None:
    later = Later(max_delay_s=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(later.turn(), 5)
    assert loop.time() - started >= 0.015
    later.request_waits()  # nothing waits: nothing to do
