"""MeteredStream holds a bounded amount of a stream for counting (issue 16: an endless stream
without usage kept every frame, 3.5 GB)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from gateway.config.model import ModelConfig, Price
from gateway.context import Exchange
from gateway.pipeline import usage
from gateway.pipeline.usage import HELD_BYTES, MeteredStream, UsageCounter
from gateway.providers.base import Operation, Usage
from gateway.sse import data_frame
from gateway.tokens import prepare_encodings


class Frames:
    """An upstream stream of ``n`` chunks of one word each, padded to ~8 KB, with no usage."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None
        self.most_held = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(self.n):
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "pad": "p" * 8000,
            }
            chunk["choices"] = [{"index": 0, "delta": {"content": f" word{i % 10}"}, "finish_reason": None}]
            yield data_frame(orjson.dumps(chunk))

    async def aclose(self) -> None:
        return None


def run(n: int, keep: bool) -> tuple[MeteredStream, int]:
    prepare_encodings()
    ex = Exchange()
    ex.attempts.deployment = ModelConfig("m", "p", "gpt-4o-mini", Price(1, 1))
    counter = UsageCounter(Operation.CHAT, {"messages": [{"role": "user", "content": "hi"}]})
    metered = MeteredStream(Frames(n), ex, counter, keep=keep)

    async def drain() -> int:
        most = 0
        async for _ in metered:
            most = max(most, metered._held)
        return most

    return metered, asyncio.run(drain())


def test_a_long_stream_without_usage_holds_a_bounded_amount_and_is_still_counted() -> None:
    n = 3 * HELD_BYTES // 8000  # ~12 MB of frames
    metered, most_held = run(n, keep=True)
    assert most_held <= HELD_BYTES + 9000
    assert metered.kept is None  # past the bound: not cached
    assert metered.usage is not None and metered.usage.estimated
    # every chunk's word is billed, exactly for the frames still held, estimated for those let go
    assert n <= metered.usage.completion_tokens <= 3 * n
    assert metered.usage_frame is not None and b'"x_gateway"' in metered.usage_frame


def test_a_usual_stream_is_kept_whole_and_counted_exactly() -> None:
    metered, _ = run(50, keep=True)
    assert metered.kept is not None and len(metered.kept) == 50
    assert metered.usage is not None
    assert metered.usage.completion_tokens == usage.UsageCounter(Operation.CHAT, {}).completion(
        metered.kept, "gpt-4o-mini"
    )
