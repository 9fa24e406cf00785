"""Bookkeeping after an answer, moved off the next request's critical path.

With few clients, the next request often arrives while the gateway is still busy with the last
one's bookkeeping (metrics, the log line, building and sending the settlement), and waits for it.
``Later`` holds that work until the next request has sent its upstream call (from then on that
request only waits for the upstream, its longest wait, so the CPU is free) or until ``max_delay_s``
has passed, whichever comes first. Under load it changes nothing but the order.

Why the upstream call and not the admission before it: the admission's Redis round-trip is barely
longer than the bookkeeping, which then often delayed the request behind it; the upstream's wait is
the longest (measured: releasing at the upstream call instead cost chat c=1 0.020 ms less CPU and
0.032 ms less latency).
"""

from __future__ import annotations

import asyncio


class Later:
    def __init__(self, max_delay_s: float = 0.002) -> None:
        self._max_delay_s = max_delay_s
        self._waiting: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def turn(self) -> None:
        """Return at the next quiet moment (see the module docstring)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.append(waiter)
        if self._timer is None:
            self._timer = loop.call_later(self._max_delay_s, self.release)
        await waiter

    def request_waits(self) -> None:
        """A request is about to call its upstream: what waits goes at the end of this loop turn,
        after the request's upstream write (made in the same turn, ahead of the woken work)."""
        if self._waiting:
            asyncio.get_running_loop().call_soon(self.release)

    def release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)
