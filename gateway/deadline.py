"""Telling that a deadline passed, by the clock that set it."""

from __future__ import annotations

import asyncio
import time


async def passed(deadline: float) -> None:
    """Return once ``time.monotonic()`` has reached ``deadline``. A timer set for a deadline may fire a
    little before it: uvloop's clock and timers count whole milliseconds of a coarse clock. Who
    then asks whether the deadline passed (a hosted-tool loop telling its wall time from an upstream's
    failure) must get yes; the wait is at most that early firing, a few milliseconds under load."""
    while (left := deadline - time.monotonic()) > 0:  # noqa: ASYNC110 (waiting on the clock, not a flag)
        await asyncio.sleep(left)
