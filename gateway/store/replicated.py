"""Writes acknowledged only once a replica has them: settlements under Sentinel.

Redis replicates asynchronously. A settlement the primary acknowledged and then died before passing
on is gone once Sentinel promotes a replica, yet the settler, told it succeeded, would never re-send
it. So under Sentinel a settlement counts as done only after ``WAIT 1 <ms>`` says a replica has it;
otherwise the caller gets ``UnconfirmedError`` and the settler re-sends it (settlements are idempotent
by request id, so the copy that lands counts once, on whichever primary has it).

``WAIT`` blocks the connection it is sent on and covers every write sent on it before, so:

* these writes have a connection of their own (the admissions' is never held by a WAIT);
* the settlements of one event-loop turn go out as one pipeline ending in one WAIT: one replica
  round-trip per batch, not per settlement, and every reply of the batch comes from the same
  connection as its WAIT (a reconnect in between cannot confirm a write made on the old one).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from gateway.store.resp import Command, ReplyError
from gateway.store.topology import Client


class UnconfirmedError(ConnectionError):
    """The write ran (or may have) on the primary, but no replica confirmed it in time."""


class Replicated:
    def __init__(self, client: Client, *, wait_ms: int) -> None:
        self.client = client
        self._wait_ms = wait_ms
        self._batch: list[tuple[Command, asyncio.Future[Any]]] = []

    def run(self, command: Command) -> asyncio.Future[Any]:
        """The command's reply (a ``ReplyError`` value for an error reply) once a replica has it;
        ``UnconfirmedError`` if none confirmed, ``ConnectionError``/``TimeoutError`` as the client
        raises them."""
        loop = asyncio.get_running_loop()
        if not self._batch:
            loop.call_soon(self._send)  # after the other settlements of this turn
        future: asyncio.Future[Any] = loop.create_future()
        self._batch.append((command, future))
        return future

    def _send(self) -> None:
        batch, self._batch = self._batch, []
        commands = [command for command, _ in batch]
        sent = asyncio.ensure_future(self.client.pipeline([*commands, ("WAIT", 1, self._wait_ms)]))
        sent.add_done_callback(functools.partial(self._answer, batch))

    def _answer(
        self, batch: list[tuple[Command, asyncio.Future[Any]]], sent: asyncio.Future[list[Any]]
    ) -> None:
        if sent.cancelled():
            for _, future in batch:
                future.cancel()
            return
        failed = sent.exception()
        replies = [] if failed is not None else sent.result()
        acked = replies[-1] if replies else None
        if failed is None and not (isinstance(acked, int) and acked >= 1):
            failed = UnconfirmedError(f"no replica confirmed the write within {self._wait_ms} ms")
        for i, (_, future) in enumerate(batch):
            if future.done():
                continue
            if replies and isinstance(replies[i], ReplyError):
                future.set_result(replies[i])  # refused, so nothing to confirm (READONLY: the caller leaves)
            elif failed is not None:
                future.set_exception(failed)
            else:
                future.set_result(replies[i])

    async def close(self) -> None:
        await self.client.close()
