"""The per-replica cap on concurrent upstream requests: queue briefly, then shed.

Without a cap a replica in front of a slow upstream keeps accepting work and every request's latency
grows without bound; with one, a request waits at most ``queue_timeout_s`` for a free slot and is then
refused with 503 + ``retry-after`` (``Overloaded``), so clients back off or go to another replica.

The gate outlives config versions (it lives on ``Shared``); a reload that changes the cap resizes it
in place. Requests already holding a slot keep it: shrinking only makes newcomers wait until enough
holders have finished.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Gate:
    """A resizable counting limiter with a timed, first-come-first-served acquire.

    ``limit`` None means no cap: ``acquire`` always succeeds at once (the count is still kept, so a
    cap set later by a reload sees the requests already in flight).
    """

    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self._held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int | None:
        return self._limit

    @property
    def held(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def resize(self, limit: int | None) -> None:
        """Adopt a new cap; holders keep their slots, waiters are let in if it grew."""
        self._limit = limit
        self._wake()

    async def acquire(self, timeout_s: float) -> bool:
        """Take a slot, waiting up to ``timeout_s``; False when none came free in time."""
        if not self._waiters and self._free():
            self._held += 1
            return True
        if timeout_s <= 0:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            # ``_wake`` counts the slot as held when it hands it over, so success needs no bookkeeping.
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            self._forget(waiter)  # wait_for cancelled the waiter, so ``_wake`` will skip it anyway
            return False
        except asyncio.CancelledError:
            # A slot handed over in the same tick as the cancellation must not be lost.
            if _granted(waiter):
                self.release()
            else:
                self._forget(waiter)
            raise
        return True

    def release(self) -> None:
        """Give a slot back; the longest waiter gets it if the cap allows."""
        self._held -= 1
        self._wake()

    def _free(self) -> bool:
        return self._limit is None or self._held < self._limit

    def _wake(self) -> None:
        while self._waiters and self._free():
            waiter = self._waiters.popleft()
            if waiter.done():  # timed out or cancelled, about to forget itself
                continue
            self._held += 1
            waiter.set_result(None)

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return  # already popped by ``_wake``


def _granted(waiter: asyncio.Future[None]) -> bool:
    return waiter.done() and not waiter.cancelled()
