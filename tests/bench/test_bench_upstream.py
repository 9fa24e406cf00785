"""The benchmark's mock upstream speaks OpenAI's wire format, checked with the real SDK."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # bench/ is not installed with the package; a conftest here would
    sys.path.append(str(REPO_ROOT))  # shadow tests/conftest.py, which other tests import by name

from bench.loadgen import SEQ_MARK, Load, Target, run_load  # noqa: E402
from bench.procs import ChildProcess, free_port, python_module  # noqa: E402

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def upstream_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("upstream") / "upstream.log"
    argv = python_module("bench.upstream", "--port", str(port), "--chunks", "5")
    with ChildProcess("upstream", argv, log, REPO_ROOT) as proc:
        proc.wait_healthy(port, 10.0)
        yield port


def client(port: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)


def test_non_streaming_completion(upstream_port: int) -> None:
    completion = client(upstream_port).chat.completions.create(model="bench-model", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.model == "bench-model"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_with_usage(upstream_port: int) -> None:
    stream = client(upstream_port).chat.completions.create(
        model="other-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert all(c.model == "other-model" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " tok" * 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_sse_framing(upstream_port: int) -> None:
    body = {"model": "bench-model", "messages": MESSAGES, "stream": True}
    url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    with httpx.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["transfer-encoding"] == "chunked"
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
    assert events[-2] == "data: [DONE]"
    assert '"usage"' not in raw  # no usage chunk unless stream_options.include_usage


async def test_load_generator_counts_every_request(upstream_port: int) -> None:
    target = Target("127.0.0.1", upstream_port, "/v1/chat/completions")
    for stream in (False, True):
        body = b'{"model": "bench-model", "messages": [], "stream": %s}' % (b"true" if stream else b"false")
        load = Load(concurrency=4, max_requests=40, duration_s=10.0, stream=stream)
        result = await run_load(target, load, body)
        assert (result.ok, result.errors) == (40, 0), result.error_sample
        assert len(result.ttfe_ns) == (40 if stream else 0)


def test_headers_override_chunks_per_request(upstream_port: int) -> None:
    body = {"model": "bench-model", "messages": MESSAGES, "stream": True}
    url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers={"x-bench-chunks": "3"}) as response:
        raw = response.read().decode()
    assert raw.count('"content":" tok"') == 3


async def test_load_generator_makes_each_request_unique(upstream_port: int) -> None:
    target = Target("127.0.0.1", upstream_port, "/v1/chat/completions")
    body = b'{"model": "bench-model", "messages": [{"role": "user", "content": "n %s"}]}' % SEQ_MARK
    seq = itertools.count(7)
    load = Load(concurrency=3, max_requests=30, duration_s=10.0, stream=False)
    result = await run_load(target, load, body, seq=seq)
    assert (result.ok, result.errors) == (30, 0), result.error_sample
    assert next(seq) == 37  # one number per request, none skipped or reused
    assert result.cache == {"none": 30}  # no x-gateway-cache header from the upstream
